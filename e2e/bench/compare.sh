#!/usr/bin/env bash
# Side-by-side benchmark of podvault, restic and rustic on real data, in one run.
#
#   e2e/bench/compare.sh [RUNS]          (default 3; medians are reported)
#
# Installs restic (Debian) and rustic 0.11.4 (cargo) when missing, builds the datasets with
# scripts/datasets.sh (PostgreSQL scale 50 and a copy of /usr/share), then for each
# run and each tool: first backup of pgdata, a no-change backup, `pgchurn 8` (the same churn
# for all three tools), the incremental backup, a restore of the latest pgdata snapshot, then
# first and no-change backups of the /usr/share copy and a restore of it. Every tool reads the same files with a
# warm page cache. Prints a Markdown table of median wall time, peak RSS and repository size.
# Not part of the test suite: it takes about ten minutes (plus rustic's build the first time).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
datasets=$top/scripts/datasets.sh
runs=${1:-3}
work=${BENCH_DIR:-/var/tmp/podvault-bench}
export DEBIAN_FRONTEND=noninteractive

command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic >/dev/null; }
command -v pgbench >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql postgresql-contrib >/dev/null; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
rustic=$(command -v rustic || echo "$HOME/.cargo/bin/rustic")
[ -x "$rustic" ] || cargo install rustic-rs --version 0.11.4 --locked
(cd "$top" && cargo build --release --locked --quiet)
podvault="$top/target/release/podvault"

mkdir -p "$work"
[ -d "$work/pgdata-pristine" ] || bash "$datasets" pgdata "$work/pgdata-pristine" 50
[ -d "$work/tree" ] || bash "$datasets" tree "$work/tree"

export PODVAULT_PASSWORD=bench RESTIC_PASSWORD=bench RUSTIC_PASSWORD=bench
results="$work/results.tsv"
: >"$results"

# measure TOOL ROW CMD...: runs CMD, appends "tool row seconds maxrss_kib" to the results.
measure() {
  local tool=$1 row=$2; shift 2
  local out
  sync # earlier writes are flushed before the clock starts, whichever tool made them
  out=$(/usr/bin/time -f '%e %M' "$@" 2>&1 >/dev/null | tail -n 1) || {
    echo "compare.sh: $tool $row failed: $out" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\n' "$tool" "$row" ${out} >>"$results"
}

init() {
  rm -rf "$work/repo-$1"
  case $1 in
    podvault) "$podvault" --repo "$work/repo-podvault" repo init >/dev/null ;;
    restic) restic -q -r "$work/repo-restic" init >/dev/null ;;
    rustic) "$rustic" -r "$work/repo-rustic" init >/dev/null 2>&1 ;;
  esac
}

backup() { # TOOL ROW DIR
  case $1 in
    podvault) measure "$1" "$2" "$podvault" --repo "$work/repo-podvault" snapshot create "$3" ;;
    restic) measure "$1" "$2" restic -q -r "$work/repo-restic" backup --host bench "$3" ;;
    rustic) measure "$1" "$2" "$rustic" -r "$work/repo-rustic" backup --host bench "$3" ;;
  esac
}

# Restores go into a freshly made file system when this machine can loop-mount one (root,
# mkfs.ext4, a free loop device): the way a restore meets a newly provisioned volume. On a
# file system without a journal (this machine's root), ext4 refuses to reuse inodes deleted
# in the last minute and scans past each of them on every create, so a restore right after
# deleting the previous tool's restore paid up to a second for its neighbour's deletion.
volume="$work/restore-volume.img"
fresh_volume() {
  [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null || return 1
  mountpoint -q "$work/restore" && umount "$work/restore"
  rm -f "$volume" && truncate -s 4G "$volume" && mkfs.ext4 -q -F "$volume" >/dev/null 2>&1 &&
    mkdir -p "$work/restore" && mount -o loop "$volume" "$work/restore" 2>/dev/null || return 1
  rmdir "$work/restore/lost+found"
}
release_volume() {
  if mountpoint -q "$work/restore"; then umount "$work/restore"; fi
  rm -f "$volume"
}
trap release_volume EXIT

restore() { # TOOL ROW TARGET
  if ! fresh_volume; then rm -rf "$3"; fi
  case $1 in
    podvault) measure "$1" "$2" "$podvault" --repo "$work/repo-podvault" snapshot restore latest "$3" ;;
    restic) measure "$1" "$2" restic -q -r "$work/repo-restic" restore latest --target "$3" ;;
    rustic) measure "$1" "$2" "$rustic" -r "$work/repo-rustic" restore latest "$3" ;;
  esac
  if mountpoint -q "$3"; then release_volume; else rm -rf "$3"; fi
}

size() { # TOOL ROW: repository size in MiB, recorded in the time column
  echo "$1	$2	$(du -sm "$work/repo-$1" | cut -f1)	0" >>"$results"
}

pg="$work/pgdata"
for run in $(seq "$runs"); do
  echo "run $run/$runs" >&2
  # Each run puts another tool first, so none always pays for the others' writeback.
  case $((run % 3)) in
    1) tools="podvault restic rustic" ;;
    2) tools="restic rustic podvault" ;;
    0) tools="rustic podvault restic" ;;
  esac
  rm -rf "$pg" && cp -a "$work/pgdata-pristine" "$pg"
  for t in $tools; do init "$t"; backup "$t" "pgdata first" "$pg"; done
  for t in $tools; do backup "$t" "pgdata no change" "$pg"; done
  bash "$datasets" pgchurn "$pg" 8 >/dev/null
  for t in $tools; do backup "$t" "pgdata after pgchurn 8" "$pg"; size "$t" "pgdata repo MiB"; done
  for t in $tools; do restore "$t" "restore pgdata" "$work/restore"; done
  for t in $tools; do init "$t"; backup "$t" "/usr/share first" "$work/tree"; size "$t" "/usr/share repo MiB"; done
  for t in $tools; do backup "$t" "/usr/share no change" "$work/tree"; done
  for t in $tools; do restore "$t" "restore /usr/share" "$work/restore"; done
done

summarize() {
python3 - "$1" <<'EOF'
import statistics, sys
from collections import defaultdict
rows, order = defaultdict(lambda: defaultdict(list)), []
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    tool, row, secs, rss = f[0], " ".join(f[1:-2]), f[-2], f[-1]
    if row not in order:
        order.append(row)
    rows[row][tool].append((float(secs), int(rss)))
tools = ["restic", "rustic", "podvault"]
print("| workload | " + " | ".join(tools) + " | podvault vs best peer |")
print("|---|" + "---|" * (len(tools) + 1))
peak = defaultdict(int)
for row in order:
    med = {}
    for t in tools:
        vals = rows[row][t]
        med[t] = statistics.median(v[0] for v in vals)
        peak[t] = max([peak[t]] + [v[1] for v in vals])
    unit = "" if "MiB" in row else " s"
    cells = [f"{med[t]:.0f}{unit}" if "MiB" in row else f"{med[t]:.2f}{unit}" for t in tools]
    best = min(med["restic"], med["rustic"])
    ratio = f"{med['podvault'] / best:.2f}×" if best else "-"
    print(f"| {row} | " + " | ".join(cells) + f" | {ratio} |")
print("| peak RSS, any row | " + " | ".join(f"{peak[t] / 1024:.0f} MiB" for t in tools) + " | |")
EOF
}

summarize "$results"
