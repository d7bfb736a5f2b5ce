//! The routes through `app()` with oneshot: admission, health, readiness, metrics, and an
//! oversized body.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use podvault_webhook::handler::{MAX_BODY, State};
use podvault_webhook::server::{Metrics, Shared, app, metrics_app};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::{FIXTURES, check, fixture, restoring};

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        state: State::new("podvault", "0.1.0"),
        ready: AtomicBool::new(false),
        metrics: Metrics::new().expect("metrics"),
    })
}

async fn call(
    router: axum::Router,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let response = router
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

fn review_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                       "spec": {"containers": [{"name": "w", "image": "nginx"}]}}}
    }))
    .expect("json")
}

#[tokio::test]
async fn admission_health_readiness_and_metrics() {
    let s = shared();
    let (status, body) = call(app(s.clone()), "POST", "/mutate-pods", review_body()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);

    assert_eq!(
        call(app(s.clone()), "GET", "/healthz", vec![]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(app(s.clone()), "GET", "/readyz", vec![]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    s.ready.store(true, Ordering::Release);
    assert_eq!(
        call(app(s.clone()), "GET", "/readyz", vec![]).await.0,
        StatusCode::OK
    );

    // More than the limit: a clear invalid answer, not a 413 or a 500.
    let (status, body) = call(
        app(s.clone()),
        "POST",
        "/mutate-pods",
        vec![b' '; MAX_BODY + 1],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("larger than 4 MiB")),
        "{answer}"
    );

    // An over-limit body still names its request when the uid comes early, as the API
    // server writes it; the pod's own uid deeper down is not taken for it.
    let mut big = br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"kind":{"group":"","version":"v1","kind":"Pod"},"uid":"7b0e-big","object":{"metadata":{"uid":"pod-uid","annotations":{"a":""#.to_vec();
    big.resize(MAX_BODY + 100, b'x');
    let (_, body) = call(app(s.clone()), "POST", "/mutate-pods", big).await;
    let answer: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(answer["response"]["uid"], "7b0e-big", "{answer}");
    assert_eq!(answer["response"]["allowed"], false);
    for (start, uid) in [
        (
            &br#"{"request":{"object":{"uid":"no"},"uid":"yes\"q""#[..],
            Some("yes\"q"),
        ),
        (br#"{"uid":"top","request":{"kind":{}}"#, None),
        (br#"[[[[[[[[[[{"request":{"uid":"deep"}}"#, None),
        (br#"{"request":{"uid":"cut-sho"#, None),
        (br#""request""#, None),
    ] {
        assert_eq!(
            podvault_webhook::handler::uid_near_start(start).as_deref(),
            uid,
            "{}",
            String::from_utf8_lossy(start)
        );
    }

    let (status, body) = call(metrics_app(s.clone()), "GET", "/metrics", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).expect("utf-8");
    assert!(
        text.contains("podvault_webhook_requests_total{outcome=\"allowed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("podvault_webhook_requests_total{outcome=\"invalid\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("podvault_webhook_request_duration_seconds_count{outcome=\"allowed\"} 1")
    );
    assert!(text.contains("podvault_webhook_injections_total 0"));
}

#[tokio::test]
async fn real_admission_reviews_through_the_router() {
    let s = shared();
    restoring(&s.state);
    for (file, uid, injected) in FIXTURES {
        let (status, body) = call(app(s.clone()), "POST", "/mutate-pods", fixture(file)).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        check(
            file,
            uid,
            injected,
            &serde_json::from_slice(&body).expect("json"),
        );
    }
}
