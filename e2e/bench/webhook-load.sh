#!/usr/bin/env bash
# Load on the admission webhook over TLS on loopback, with 10,000 pending PodVolumeRestores
# in its cache: wrk (Debian) holds about 1,000 requests per second (10 connections, each
# waiting 10 ms between requests) for 30 s, then runs flat out, and reports latency
# percentiles and errors. Usage: e2e/bench/webhook-load.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null
cargo build -q --release -p podvault-webhook --example load_target
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
target/release/examples/load_target >"$work/port" &
server=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.05; done
port=$(cat "$work/port")
# A ReplicaSet's pod that mounts a claim with a pending restore: the webhook injects.
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"b3f1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"ns-7","operation":"CREATE","userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller"},"object":{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"db-7d9c6b5f4-","labels":{"app":"db","pod-template-hash":"7d9c6b5f4"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"db-7d9c6b5f4","uid":"rs","controller":true}]},"spec":{"containers":[{"name":"db","image":"postgres:16","volumeMounts":[{"name":"data","mountPath":"/var/lib/postgresql/data"}]}],"volumes":[{"name":"data","persistentVolumeClaim":{"claimName":"claim-7"}},{"name":"scratch","emptyDir":{}}]}},"dryRun":false}}]]
function delay() return tonumber(os.getenv("WRK_DELAY_MS") or "0") end
LUA
# The answer is a patch (checked once; wrk then counts non-2xx answers and socket errors).
body=$(sed -n 's/^wrk.body = \[\[\(.*\)\]\]$/\1/p' "$work/post.lua")
curl -sk -H 'Content-Type: application/json' -d "$body" "https://127.0.0.1:$port/mutate-pods" \
  | grep -q '"patchType":"JSONPatch"' || { echo "the webhook did not inject" >&2; exit 1; }
echo "== about 1,000 requests/s (10 connections, 10 ms apart), ${seconds}s"
WRK_DELAY_MS=10 wrk -t2 -c10 -d"${seconds}s" --latency -s "$work/post.lua" "https://127.0.0.1:$port/mutate-pods"
echo "== flat out (10 connections), ${seconds}s"
WRK_DELAY_MS=0 wrk -t2 -c10 -d"${seconds}s" --latency -s "$work/post.lua" "https://127.0.0.1:$port/mutate-pods"
