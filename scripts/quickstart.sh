#!/usr/bin/env bash
# Builds podvault, backs up a real directory into a new local repository, restores it and
# compares: the main job on the embedded default (no cluster, no server).
#   scripts/quickstart.sh [DIR]      DIR defaults to /usr/share/doc
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/doc}
work=$(mktemp -d -t podvault-quickstart.XXXXXX)
# PODVAULT_BIN: a podvault binary to use instead of building one (the tests give theirs).
if [ -n "${PODVAULT_BIN:-}" ]; then
  pv=$PODVAULT_BIN
else
  cargo build --release --locked --quiet
  pv=target/release/podvault
fi
export PODVAULT_REPO="$work/repo" PODVAULT_PASSWORD=${PODVAULT_PASSWORD:-quickstart-password}
"$pv" repo init
"$pv" snapshot create "$src"
echo "-- again, unchanged files are not read:"
"$pv" snapshot create "$src"
"$pv" snapshot ls
"$pv" snapshot restore latest "$work/restore"
if ! diff -r --no-dereference "$src" "$work/restore"; then
  echo "quickstart: FAILED: the restored copy $work/restore differs from $src (above)" >&2
  exit 1
fi
echo "restore matches $src"
"$pv" repo check --read-data
echo "repository: $work/repo (password: \$PODVAULT_PASSWORD); restored copy: $work/restore"
