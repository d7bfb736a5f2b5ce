#!/usr/bin/env bash
# The cluster suite: a kind cluster on a machine with Docker. It builds the image,
# installs MinIO and the chart, backs up a Deployment's volume, deletes the namespace,
# restores it, checks the data byte for byte, and checks that the webhook touched no pod
# of another namespace. Skipped, with the reason, where Docker, kind, kubectl or helm is
# missing, or no cluster can be made.
#   e2e/cluster/run.sh            # KEEP=1 keeps the cluster afterwards
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=podvault-e2e
ns=podvault
app=e2e-shop

skip() { echo "e2e/cluster: skipped: $*"; exit 0; }
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed"
done
docker info >/dev/null 2>&1 || skip "no Docker engine is reachable (docker info fails)"

work=$(mktemp -d)
cleanup() {
  rm -rf "$work"
  [ "${KEEP:-}" = 1 ] || kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
export KUBECONFIG="$work/kubeconfig"

step() { echo "== $*"; }

step "image"
docker build -q -t podvault:e2e . >/dev/null
cargo build -q --release --locked --bin podvault
podvault() { target/release/podvault -n "$ns" "$@"; }

step "cluster"
kind get clusters 2>/dev/null | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s \
  || skip "kind could not create a cluster"
kind get kubeconfig --name "$cluster" >"$KUBECONFIG"
kind load docker-image podvault:e2e --name "$cluster"

step "object storage (MinIO)"
kubectl create namespace minio --dry-run=client -o yaml | kubectl apply -f -
kubectl -n minio apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio}
spec:
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
        - name: minio
          image: quay.io/minio/minio:latest
          args: [server, /data]
          env:
            - {name: MINIO_ROOT_USER, value: e2e-access}
            - {name: MINIO_ROOT_PASSWORD, value: e2e-secret-key}
          ports: [{containerPort: 9000}]
          volumeMounts: [{name: data, mountPath: /data}]
          readinessProbe: {httpGet: {path: /minio/health/ready, port: 9000}}
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: minio}
spec:
  selector: {app: minio}
  ports: [{port: 9000}]
YAML
kubectl -n minio rollout status deploy/minio --timeout=180s
kubectl -n minio delete job make-bucket --ignore-not-found
kubectl -n minio apply -f - <<'YAML'
apiVersion: batch/v1
kind: Job
metadata: {name: make-bucket}
spec:
  backoffLimit: 10
  template:
    spec:
      restartPolicy: OnFailure
      containers:
        - name: mc
          image: quay.io/minio/mc:latest
          command: [sh, -c, "mc alias set m http://minio:9000 e2e-access e2e-secret-key && mc mb -p m/backups"]
YAML
kubectl -n minio wait --for=condition=complete job/make-bucket --timeout=180s

step "podvault"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" create secret generic podvault-s3 \
  --from-literal=AWS_ACCESS_KEY_ID=e2e-access --from-literal=AWS_SECRET_ACCESS_KEY=e2e-secret-key \
  --dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install podvault helm/podvault -n "$ns" --wait --timeout 5m \
  --set image.repository=podvault --set image.tag=e2e --set image.pullPolicy=Never \
  --set storage.location=s3:backups/e2e --set storage.endpoint=http://minio.minio:9000 \
  --set storage.pathStyle=true --set storage.region=us-east-1 \
  --set storage.credentialsSecret=podvault-s3 --set logFormat=text \
  --set restoreHelper.image=podvault:e2e

step "an application with data"
workload() {
  kubectl create namespace "$app" --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n "$app" apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {backup.podvault.io/backup-volumes: data}
    spec:
      securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}
      containers:
        - name: web
          image: busybox:1.36
          # Writes its data once: a restored volume is kept as it is.
          command: [sh, -c, "[ -f /data/seed ] || { head -c 8388608 /dev/urandom > /data/seed && mkdir -p /data/a/b && for i in $(seq 100); do head -c $((i*97)) /dev/urandom > /data/a/b/f$i; done; }; sleep 1000000"]
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
YAML
  kubectl -n "$app" rollout status deploy/web --timeout=180s
}
sums() { kubectl -n "$app" exec deploy/web -c web -- sh -c 'cd /data && find . -type f | sort | xargs md5sum'; }
workload
sleep 2
sums >"$work/before"
[ "$(wc -l <"$work/before")" -eq 101 ] || { echo "the application did not write its data" >&2; exit 1; }

step "backup"
podvault backup create e2e-1 --include-namespaces "$app" --wait
podvault backup describe e2e-1

step "disaster: the namespace is deleted"
kubectl delete namespace "$app" --wait --timeout=180s

step "restore"
podvault restore create e2e-r1 --from-backup e2e-1 --wait &
restore=$!
kubectl wait --for=jsonpath='{.metadata.labels.podvault\.io/restore-in-progress}' namespace/"$app" --timeout=120s 2>/dev/null \
  || until kubectl get namespace "$app" >/dev/null 2>&1; do sleep 1; done
# A pod created meanwhile in another namespace must not be touched.
kubectl -n default run e2e-bystander --image=busybox:1.36 --restart=Never -- sleep 600
workload
wait "$restore"
podvault restore describe e2e-r1
sums >"$work/after"
diff -u "$work/before" "$work/after" && echo "the restored data is identical"

step "the webhook touched only the restored namespace"
touched=$(kubectl get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{.spec.initContainers[*].name}{"\n"}{end}' \
  | awk '/restore-wait/ {print $1}')
echo "pods with the restore helper: ${touched:-none}"
if echo "$touched" | grep -v "^$app/" | grep -q .; then
  echo "the webhook touched pods outside $app" >&2
  exit 1
fi
echo "$touched" | grep -q "^$app/" || { echo "the restored pod did not get the restore helper" >&2; exit 1; }
echo "e2e/cluster: passed"
