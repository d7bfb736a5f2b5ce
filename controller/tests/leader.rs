//! Leader election on a Lease: who may take it, and the exact requests of taking,
//! renewing, waiting and losing a race.

mod apiserver;

use apiserver::{ApiServer, BY_CONTROLLER, Call};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use podvault_controller::leader::{may_take, try_take};
use serde_json::{Value, json};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/podvault/leases";

fn at(text: &str) -> Timestamp {
    text.parse().expect("time")
}

fn lease(holder: &str, renewed: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "podvault-controller", "namespace": "podvault",
                        "resourceVersion": "41"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "acquireTime": "2026-11-24T09:00:00.000000Z",
                    "renewTime": renewed, "leaseTransitions": 3}})
}

#[test]
fn a_lease_is_free_when_unheld_ours_or_not_renewed_for_its_duration() {
    let l: Lease =
        serde_json::from_value(lease("pod-a", "2026-11-24T10:00:00.000000Z")).expect("lease");
    assert!(may_take(&l, "pod-a", at("2026-11-24T10:00:05Z")), "our own");
    assert!(
        !may_take(&l, "pod-b", at("2026-11-24T10:00:10Z")),
        "held and fresh"
    );
    assert!(
        !may_take(&l, "pod-b", at("2026-11-24T10:00:15Z")),
        "exactly at expiry"
    );
    assert!(may_take(&l, "pod-b", at("2026-11-24T10:00:16Z")), "expired");
    let free: Lease =
        serde_json::from_value(lease("", "2026-11-24T10:00:00.000000Z")).expect("lease");
    assert!(may_take(&free, "pod-b", at("2026-11-24T10:00:01Z")));
}

/// One attempt of replica `pod-b` at 10:00.
async fn take(client: &kube::Client) -> Result<bool, podvault_controller::cluster::Error> {
    try_take(
        client,
        "podvault",
        "podvault-controller",
        "pod-b",
        at("2026-11-24T10:00:00Z"),
    )
    .await
}

#[tokio::test]
async fn taking_renewing_waiting_and_losing_a_race() {
    // No Lease yet: created with us as holder.
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{LEASES}/podvault-controller")).not_found(),
        Call::new("POST", format!("{LEASES}?{BY_CONTROLLER}"))
            .body(
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "podvault-controller"},
                "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 15,
                         "acquireTime": "2026-11-24T10:00:00.000000Z",
                         "renewTime": "2026-11-24T10:00:00.000000Z", "leaseTransitions": 0}}),
            )
            .created(),
    ]);
    let took = take(&client).await.expect("take");
    assert!(took);
    server.done().await;

    // Held by another and fresh: nothing is written.
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{LEASES}/podvault-controller"))
            .ok(lease("pod-a", "2026-11-24T09:59:55.000000Z")),
    ]);
    let took = take(&client).await.expect("look");
    assert!(!took);
    server.done().await;

    // Expired: replaced with the resourceVersion read (a compare-and-swap); another
    // replica got there first, so the API server answers 409 and we do not lead.
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{LEASES}/podvault-controller"))
            .ok(lease("pod-a", "2026-11-24T09:59:00.000000Z")),
        Call::new(
            "PUT",
            format!("{LEASES}/podvault-controller?{BY_CONTROLLER}"),
        )
        .body(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "podvault-controller", "namespace": "podvault",
                             "resourceVersion": "41"},
                "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 15,
                         "acquireTime": "2026-11-24T10:00:00.000000Z",
                         "renewTime": "2026-11-24T10:00:00.000000Z", "leaseTransitions": 4}}),
        )
        .reply(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "Conflict", "code": 409, "message": "conflict"}),
        ),
    ]);
    let took = take(&client).await.expect("race");
    assert!(!took);
    server.done().await;
}
