#!/usr/bin/env bash
# The same backups into a directory and into S3 on loopback (s3s-fs), one run each way,
# alternating, RUNS times (default 3); prints medians and the S3/directory speed ratio.
#
#   e2e/bench/s3-vs-dir.sh [RUNS]
#
# Data: the pgdata (PostgreSQL scale 50) and /usr/share copies that compare.sh builds.
# s3s-fs keeps its objects in the same file system as the directory repository, so the two
# differ only by the S3 protocol path. Not part of the test suite.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
datasets=$top/scripts/datasets.sh
runs=${1:-3}
work=${BENCH_DIR:-/var/tmp/podvault-bench}
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v s3s-fs >/dev/null || cargo install s3s-fs --version 0.14.1 --features binary --locked
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc >/dev/null; }
(cd "$top" && cargo build --release --locked --quiet)
podvault="$top/target/release/podvault"
mkdir -p "$work"
[ -d "$work/pgdata-pristine" ] || bash "$datasets" pgdata "$work/pgdata-pristine" 50
[ -d "$work/tree" ] || bash "$datasets" tree "$work/tree"

s3root="$work/s3root"
rm -rf "$s3root" && mkdir -p "$s3root/bench"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true PODVAULT_PASSWORD=bench
export PODVAULT_S3_ENDPOINT="http://127.0.0.1:$port" PODVAULT_S3_PATH_STYLE=true
s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3root" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1

results="$work/s3-results.tsv"
: >"$results"
server_cpu() { # CPU seconds s3s-fs has used so far
  awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$server/stat"
}
time_it() { # time_it TARGET DATASET REPO: wall s, podvault CPU s, s3s-fs CPU s
  local before after t
  before=$(server_cpu)
  t=$(/usr/bin/time -f "%e %U %S" "$podvault" --repo "$3" snapshot create "$work/$2" 2>&1 >/dev/null | tail -1)
  after=$(server_cpu)
  set -- "$1" "$2" $t
  echo -e "$1\t$2\t$3\t$(echo "$4 + $5" | bc)\t$(echo "$after - $before" | bc)" >>"$results"
}
for run in $(seq "$runs"); do
  for dataset in pgdata-pristine tree; do
    for target in dir s3; do
      if [ "$target" = dir ]; then
        repo="$work/s3bench-dir"; rm -rf "$repo"
      else
        repo="s3:bench/r$run-$dataset"
      fi
      "$podvault" --repo "$repo" repo init --kdf-memory-kib 65536 >/dev/null
      sync
      time_it "$target" "$dataset" "$repo"
    done
  done
  rm -rf "$s3root/bench"/r* "$work/s3bench-dir"
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
print("| first backup | directory | S3 (s3s-fs, loopback) | S3 speed / directory speed "
      "| podvault CPU, directory / S3 | s3s-fs CPU |")
print("|---|---|---|---|---|---|")
for ds in ("pgdata-pristine", "tree"):
    def med(t, col):
        return statistics.median(float(r[col]) for r in rows if r[0] == t and r[1] == ds)
    d, s = med("dir", 2), med("s3", 2)
    print(f"| {ds} | {d:.2f} s | {s:.2f} s | {d / s:.0%} | {med('dir', 3):.2f} s / "
          f"{med('s3', 3):.2f} s | {med('s3', 4):.2f} s |")
PY
