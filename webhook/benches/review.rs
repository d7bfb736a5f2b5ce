//! The cost of answering one AdmissionReview with 10,000 pending PodVolumeRestores in the
//! cache (100 namespaces of 100): a pod that gets the helper, and one that does not.
//!
//!     cargo bench -p podvault-webhook --bench review

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podvault_webhook::handler::{Outcome, State, review};
use serde_json::json;

#[path = "shared/mod.rs"]
mod shared;
use shared::pending;

fn body(namespace: &str, claim: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "b3f1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "db-7d9c6b5f4-",
                             "labels": {"app": "db", "pod-template-hash": "7d9c6b5f4"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                  "name": "db-7d9c6b5f4", "uid": "rs",
                                                  "controller": true}]},
                "spec": {
                    "containers": [{"name": "db", "image": "postgres:16",
                                    "volumeMounts": [{"name": "data",
                                                      "mountPath": "/var/lib/postgresql/data"}]}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                                {"name": "scratch", "emptyDir": {}}]
                }
            },
            "dryRun": false
        }
    }))
    .expect("a body")
}

fn bench(c: &mut Criterion) {
    let state = State::new("podvault", "0.1.0");
    state.set_pending(pending(10_000));
    let mut group = c.benchmark_group("review");
    for (name, body, outcome) in [
        ("inject", body("ns-7", "claim-7"), Outcome::Injected),
        ("allow", body("elsewhere", "claim-7"), Outcome::Allowed),
    ] {
        assert_eq!(review(&body, &state).1, outcome, "{name}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| b.iter(|| review(black_box(&body), &state)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
