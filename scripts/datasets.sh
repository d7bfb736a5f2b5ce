#!/usr/bin/env bash
# Reproducible test and benchmark inputs built from real software on the machine, not synthetic
# toys. Used by tests/realdata.rs and e2e/bench/.
#
#   datasets.sh pgdata DIR [SCALE]      PostgreSQL 15 data directory filled by `pgbench -i -s SCALE`
#                                       (default 50, about 750 MB: large 1 GiB-segment table files)
#   datasets.sh pgchurn DIR [SECONDS]   run pgbench against DIR for SECONDS (default 15): scattered
#                                       in-place page writes inside the large files, as a live database does
#   datasets.sh tree DIR                a copy of /usr/share: tens of thousands of real small files,
#                                       symlinks and directories
#   datasets.sh random DIR [MB]         one incompressible file of MB MiB (default 1024), same bytes every time
#
# Needs: postgresql-15 and pgbench (Debian packages postgresql, postgresql-contrib), run as root.
set -euo pipefail

PGBIN=/usr/lib/postgresql/15/bin
cmd=${1:?usage: datasets.sh pgdata|pgchurn|tree|random DIR [ARG]}
dir=${2:?usage: datasets.sh $cmd DIR [ARG]}

as_pg() { runuser -u postgres -- "$@"; }

pg_start() {
  local sock
  sock=$(mktemp -d -t pgsock.XXXXXX)
  chown postgres "$sock"
  as_pg "$PGBIN/pg_ctl" -D "$dir" -s -w -l "$sock/log" \
    -o "-c listen_addresses='' -c unix_socket_directories=$sock -c fsync=off -c full_page_writes=off" start
  echo "$sock"
}

pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$dir" -s -w -m fast stop; }

case "$cmd" in
  pgdata)
    scale=${3:-50}
    [ -e "$dir" ] && { echo "datasets.sh: $dir exists" >&2; exit 1; }
    mkdir -p "$dir" && chown postgres "$dir"
    as_pg "$PGBIN/initdb" -D "$dir" -A trust -U postgres >/dev/null
    sock=$(pg_start)
    as_pg pgbench -h "$sock" -U postgres -i -q -s "$scale" postgres >/dev/null 2>&1
    as_pg psql -h "$sock" -U postgres -qc 'CHECKPOINT' postgres
    pg_stop
    du -sh "$dir"
    ;;
  pgchurn)
    secs=${3:-15}
    sock=$(pg_start)
    as_pg pgbench -h "$sock" -U postgres -c 2 -j 2 -T "$secs" postgres 2>/dev/null | grep -E '^(number of transactions actually processed|tps)' || true
    as_pg psql -h "$sock" -U postgres -qc 'CHECKPOINT' postgres
    pg_stop
    ;;
  tree)
    [ -e "$dir" ] && { echo "datasets.sh: $dir exists" >&2; exit 1; }
    mkdir -p "$dir"
    cp -a /usr/share/. "$dir/"
    echo "$(find "$dir" -type f | wc -l) files, $(du -sh "$dir" | cut -f1)"
    ;;
  random)
    mb=${3:-1024}
    mkdir -p "$dir"
    openssl enc -aes-256-ctr -nosalt -pass pass:podvault-bench -pbkdf2 </dev/zero 2>/dev/null \
      | head -c "$((mb * 1024 * 1024))" >"$dir/random.bin"
    ls -l "$dir/random.bin"
    ;;
  *)
    echo "datasets.sh: unknown dataset '$cmd'" >&2; exit 2 ;;
esac
