//! A scripted stand-in for the Kubernetes API server (kube-rs's tower-test mock): each
//! test lists the exact requests it expects, in order, with the answers to give. A request
//! out of order, or one the script does not have, fails the test with both printed.

#![allow(dead_code)]

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

type Check = Box<dyn Fn(&Value) + Send>;

/// The query of a status written by server-side apply as the controller.
pub const APPLY_CONTROLLER: &str = "&force=true&fieldManager=podvault-controller";
/// The query of a create or merge patch by the controller.
pub const BY_CONTROLLER: &str = "&fieldManager=podvault-controller";
/// The query of a status written by server-side apply as a node agent.
pub const APPLY_AGENT: &str = "&force=true&fieldManager=podvault-node-agent";
/// The query of a merge patch by a node agent.
pub const BY_AGENT: &str = "&fieldManager=podvault-node-agent";
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// One expected request and its answer.
pub struct Call {
    method: &'static str,
    path: String,
    body: Option<Check>,
    status: u16,
    reply: Value,
}

impl Call {
    /// Expects `METHOD path?query` (the path and query exactly as kube sends them).
    pub fn new(method: &'static str, path: impl Into<String>) -> Call {
        Call {
            method,
            path: path.into(),
            body: None,
            status: 200,
            reply: json!({}),
        }
    }

    /// The request body must equal `expected` exactly.
    pub fn body(mut self, expected: Value) -> Call {
        self.body = Some(Box::new(move |got| {
            assert_eq!(
                got,
                &expected,
                "request body\n got: {}\nwant: {}",
                pretty(got),
                pretty(&expected)
            )
        }));
        self
    }

    /// The request body must pass `check`.
    pub fn body_check(mut self, check: impl Fn(&Value) + Send + 'static) -> Call {
        self.body = Some(Box::new(check));
        self
    }

    /// Answers with `status` and `reply`.
    pub fn reply(mut self, status: u16, reply: Value) -> Call {
        self.status = status;
        self.reply = reply;
        self
    }

    /// Answers 200 with `reply`.
    pub fn ok(self, reply: Value) -> Call {
        self.reply(200, reply)
    }

    /// Answers 404 with a Status object, as the API server does.
    pub fn not_found(self) -> Call {
        self.reply(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    /// Answers 201 with the request's own body (what a create returns), with `uid` set.
    pub fn created(mut self) -> Call {
        self.status = 201;
        self.reply = Value::Null;
        self
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A list answer of `items`.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "v1",
           "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The mock API server: a client for the code under test and the script's task.
pub struct ApiServer {
    task: JoinHandle<Vec<String>>,
    seen: Seen,
}

impl ApiServer {
    /// Starts the script; returns the client to hand to the code under test.
    pub fn start(script: Vec<Call>) -> (Client, ApiServer) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen: Seen = Seen::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (i, call) in script.into_iter().enumerate() {
                let Some((request, send)) = handle.next_request().await else {
                    panic!(
                        "request {i} never came: expected {} {}\nseen so far:\n{}",
                        call.method,
                        call.path,
                        seen.join("\n")
                    );
                };
                let got = format!("{} {}", request.method(), request.uri());
                let want = format!("{} {}", call.method, call.path);
                assert_eq!(
                    got,
                    want,
                    "request {i} differs; seen before it:\n{}",
                    seen.join("\n")
                );
                seen.push(got.clone());
                log.lock().expect("log").push(got);
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("request body is JSON")
                };
                if let Some(check) = &call.body {
                    check(&body);
                }
                let reply = if call.reply.is_null() {
                    let mut b = body.clone();
                    if let Some(meta) = b.get_mut("metadata") {
                        meta["uid"] = json!(format!("uid-{i}"));
                        meta["resourceVersion"] = json!("2");
                    }
                    b
                } else {
                    call.reply
                };
                let response = Response::builder()
                    .status(call.status)
                    .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
                    .expect("response");
                send.send_response(response);
            }
            seen
        });
        (Client::new(service, "default"), ApiServer { task, seen })
    }

    /// Waits (up to 10 s) until every scripted request came; returns them.
    pub async fn done(self) -> Vec<String> {
        match tokio::time::timeout(std::time::Duration::from_secs(10), self.task).await {
            Ok(r) => r.expect("the API script failed"),
            Err(_) => panic!(
                "the script's remaining requests never came; seen:\n{}",
                self.seen.lock().expect("log").join("\n")
            ),
        }
    }
}
