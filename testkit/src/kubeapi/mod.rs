//! A stand-in Kubernetes API server for the end-to-end suite: plain HTTP on loopback, every
//! resource kept in memory as JSON, speaking the part of the API podvault's processes use.
//! That covers list with label and field selectors, watch with resourceVersion, get,
//! create, replace with resourceVersion preconditions, merge and JSON patches, server-side
//! apply with field managers and their conflicts, and the `status` subresource. Deletion
//! honours finalizers, and owner references are collected.
//!
//! It refuses what a real API server refuses: a custom resource that does not match its
//! CRD's structural schema (podvault's CRDs are installed from the start; unknown fields
//! are pruned with a warning, as the server does, and [`KubeApi::warnings`] lists them), a
//! core object that does not decode as its k8s-openapi type, an apply that would take a
//! field another manager owns, and a write whose resourceVersion is stale.
//! The real binaries connect to it through a kubeconfig. It is the only stand-in of the
//! suite: S3, TLS, the webhook and the node agents are the real ones.

mod fields;
mod schema;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// (resource path without namespace and name, e.g. `apis/podvault.io/v1alpha1/backups`).
type Kind = String;
/// (namespace, name); the namespace is empty for cluster-scoped objects.
type Key = (String, String);

#[derive(Clone, Debug)]
struct Change {
    kind: Kind,
    version: u64,
    kind_of_change: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    version: u64,
    log: Vec<Change>,
    requests: Vec<String>,
    /// What each kind of object must satisfy.
    checks: BTreeMap<Kind, schema::Check>,
    /// Who owns which fields, per object.
    managed: BTreeMap<(Kind, Key), fields::Managed>,
    /// Fields dropped because their kind does not have them.
    warnings: Vec<String>,
}

/// The shared state: objects, their history, and a channel of changes for watches.
#[derive(Clone)]
pub struct KubeApi {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<Change>,
}

impl Default for KubeApi {
    fn default() -> KubeApi {
        KubeApi::new()
    }
}

/// Where a request points.
#[derive(Debug)]
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *segments.first()? {
        "api" if segments.len() >= 2 => (segments[..2].join("/"), &segments[2..]),
        "apis" if segments.len() >= 3 => (segments[..3].join("/"), &segments[3..]),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let resource = rest.first()?;
    Some(Target {
        kind: format!("{prefix}/{resource}"),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        status: rest.get(2) == Some(&"status"),
    })
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "reason": reason, "code": code,
                      "message": message});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Whether `labels` satisfy a selector in kubectl's forms (`a=b`, `a==b`, `a!=b`, `a`, `!a`,
/// `a in (x,y)` is not used by podvault and not supported).
fn labels_match(labels: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            get(k.trim_end_matches('=')) == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

fn fields_match(object: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((path, value)) => {
                let pointer = format!("/{}", path.trim_end_matches('=').replace('.', "/"));
                object.pointer(&pointer).and_then(Value::as_str)
                    == Some(value.trim_start_matches('='))
            }
            None => false,
        })
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl KubeApi {
    /// An empty API.
    pub fn new() -> KubeApi {
        let (changes, _) = broadcast::channel(4096);
        let crds: Vec<Value> = podvault_api::crd::all()
            .into_iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let mut checks = schema::core_checks();
        checks.extend(schema::crd_checks(&crds));
        KubeApi {
            store: Arc::new(Mutex::new(Store {
                checks,
                ..Store::default()
            })),
            changes,
        }
    }

    /// The fields the server dropped because their kind does not declare them, as
    /// `resource/name: field` (a real server drops them too, and only warns).
    pub fn warnings(&self) -> Vec<String> {
        self.lock().warnings.clone()
    }

    /// The field managers of the object at `path` and the fields each owns (JSON pointers).
    pub fn managers(&self, path: &str) -> BTreeMap<String, Vec<String>> {
        let Some(t) = parse_path(path) else {
            return BTreeMap::new();
        };
        let key = (
            t.kind,
            (t.namespace.unwrap_or_default(), t.name.unwrap_or_default()),
        );
        self.lock()
            .managed
            .get(&key)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves on a free port of 127.0.0.1 until the runtime ends; returns the address.
    pub async fn serve(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API");
        let address = listener.local_addr().expect("address");
        let app = Router::new().fallback(handle).with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        address
    }

    /// A kubeconfig that points at `address`, without credentials.
    pub fn kubeconfig(address: std::net::SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: \
             http://{address}\nusers:\n- name: e2e\n  user: {{}}\ncontexts:\n- name: e2e\n  \
             context:\n    cluster: e2e\n    user: e2e\n    namespace: default\n\
             current-context: e2e\n"
        )
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The object at `path` (`api/v1/namespaces/shop/pods/db-0`), if any.
    pub fn get(&self, path: &str) -> Option<Value> {
        let t = parse_path(path)?;
        let key = (t.namespace.unwrap_or_default(), t.name?);
        self.lock().objects.get(&t.kind)?.get(&key).cloned()
    }

    /// The objects of a collection path (`apis/podvault.io/v1alpha1/namespaces/podvault/backups`,
    /// or without the namespace for all of them).
    pub fn list(&self, path: &str) -> Vec<Value> {
        let Some(t) = parse_path(path) else {
            return Vec::new();
        };
        let store = self.lock();
        store
            .objects
            .get(&t.kind)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|n| n == ns))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates (or replaces) an object at its collection path, as a test's setup would
    /// with kubectl; returns it with uid and resourceVersion.
    pub fn put(&self, collection: &str, mut object: Value) -> Value {
        let t = parse_path(collection).expect("a collection path");
        let name = object["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        if let Some(ns) = &t.namespace {
            object["metadata"]["namespace"] = json!(ns);
        }
        let mut store = self.lock();
        if let Err(invalid) = admit(&mut store, &t.kind, &name, &mut object) {
            panic!("a test put an object the API server refuses: {invalid:?}");
        }
        let old = store
            .objects
            .get(&t.kind)
            .and_then(|m| m.get(&(t.namespace.clone().unwrap_or_default(), name.clone())))
            .cloned();
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = old
                .as_ref()
                .map(|o| o["metadata"]["uid"].clone())
                .unwrap_or_else(|| json!(format!("uid-{name}-{}", store.version + 1)));
        }
        if object["metadata"]["creationTimestamp"].is_null() {
            object["metadata"]["creationTimestamp"] = json!(now());
        }
        self.commit(
            &mut store,
            &t.kind,
            t.namespace.unwrap_or_default(),
            object,
            kind,
        )
    }

    /// Stores `object` under a new resourceVersion and tells the watchers.
    fn commit(
        &self,
        store: &mut Store,
        kind: &str,
        namespace: String,
        mut object: Value,
        change: &'static str,
    ) -> Value {
        store.version += 1;
        object["metadata"]["resourceVersion"] = json!(store.version.to_string());
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let entry = store.objects.entry(kind.to_string()).or_default();
        if change == "DELETED" {
            entry.remove(&(namespace.clone(), name.clone()));
            store.managed.remove(&(kind.to_string(), (namespace, name)));
        } else {
            entry.insert((namespace, name), object.clone());
        }
        let record = Change {
            kind: kind.to_string(),
            version: store.version,
            kind_of_change: change,
            object: object.clone(),
        };
        store.log.push(record.clone());
        let _ = self.changes.send(record);
        object
    }

    /// Removes an object now, then everything it owns.
    fn remove(&self, store: &mut Store, kind: &str, object: Value) {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = object["metadata"]["uid"].clone();
        self.commit(store, kind, namespace, object, "DELETED");
        let owned: Vec<(String, Value)> = store
            .objects
            .iter()
            .flat_map(|(k, m)| m.values().map(move |o| (k.clone(), o.clone())))
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .collect();
        for (k, mut o) in owned {
            if o["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
            {
                o["metadata"]["deletionTimestamp"] = json!(now());
                let ns = o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.commit(store, &k, ns, o, "MODIFIED");
            } else {
                self.remove(store, &k, o);
            }
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Params {
    label_selector: Option<String>,
    field_selector: Option<String>,
    watch: Option<String>,
    resource_version: Option<String>,
    field_manager: Option<String>,
    force: Option<bool>,
}

/// Who writes: the field manager the request names, else (as the API server does) its
/// user agent.
fn manager(params: &Params, headers: &HeaderMap) -> String {
    params.field_manager.clone().unwrap_or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('/').next())
            .unwrap_or("unknown")
            .to_string()
    })
}

/// Checks `object` against its kind's rules, pruning what the kind does not have (noted
/// as a warning); the 422 a real server would answer, if refused.
fn admit(
    store: &mut Store,
    kind: &str,
    name: &str,
    object: &mut Value,
) -> Result<(), Box<Response>> {
    let Some(check) = store.checks.get(kind) else {
        return Ok(());
    };
    match schema::admit(check, object) {
        Ok(pruned) => {
            store
                .warnings
                .extend(pruned.into_iter().map(|f| format!("{kind}/{name}: {f}")));
            Ok(())
        }
        Err(schema::Invalid(errors)) => Err(Box::new(status(
            422,
            "Invalid",
            &format!("{kind} \"{name}\" is invalid: {}", errors.join(", ")),
        ))),
    }
}

async fn handle(
    State(api): State<KubeApi>,
    method: Method,
    uri: Uri,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    api.lock().requests.push(format!("{method} {uri}"));
    let Some(t) = parse_path(uri.path()) else {
        return status(
            404,
            "NotFound",
            &format!("{} is not served here", uri.path()),
        );
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return status(400, "BadRequest", &format!("body: {e}")),
        }
    };
    match (&method, &t.name) {
        (&Method::GET, None) if params.watch.as_deref() == Some("true") => watch(&api, &t, &params),
        (&Method::GET, None) => list(&api, &t, &params),
        (&Method::GET, Some(name)) => match api.lock().objects.get(&t.kind).and_then(|m| {
            m.get(&(t.namespace.clone().unwrap_or_default(), name.clone()))
                .cloned()
        }) {
            Some(o) => ok(StatusCode::OK, &o),
            None => status(404, "NotFound", &format!("{} {name} not found", t.kind)),
        },
        (&Method::POST, None) => create(&api, &t, body, &manager(&params, &headers)),
        (&Method::PUT, Some(name)) => replace(&api, &t, name, body, &manager(&params, &headers)),
        (&Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if content_type.starts_with("application/apply-patch") {
                let Some(manager) = params.field_manager.as_deref() else {
                    return status(
                        400,
                        "BadRequest",
                        "fieldManager is required for apply patch",
                    );
                };
                return apply(&api, &t, name, body, manager, params.force == Some(true));
            }
            let json_patch = content_type.starts_with("application/json-patch");
            patch(
                &api,
                &t,
                name,
                body,
                json_patch,
                &manager(&params, &headers),
            )
        }
        (&Method::DELETE, Some(name)) => delete(&api, &t, name),
        _ => status(405, "MethodNotAllowed", &format!("{method} {}", uri.path())),
    }
}

/// Which objects a list or watch asks for: a namespace (or all) and the selectors.
#[derive(Clone)]
struct Selection {
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

impl Selection {
    fn new(t: &Target, params: &Params) -> Selection {
        Selection {
            namespace: t.namespace.clone(),
            labels: params.label_selector.clone(),
            fields: params.field_selector.clone(),
        }
    }

    fn matches(&self, namespace: &str, object: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self
                .labels
                .as_deref()
                .is_none_or(|s| labels_match(&object["metadata"]["labels"], s))
            && self
                .fields
                .as_deref()
                .is_none_or(|s| fields_match(object, s))
    }
}

fn list(api: &KubeApi, t: &Target, params: &Params) -> Response {
    let selection = Selection::new(t, params);
    let store = api.lock();
    let items: Vec<Value> = store
        .objects
        .get(&t.kind)
        .map(|m| {
            m.iter()
                .filter(|((ns, _), o)| selection.matches(ns, o))
                .map(|(_, o)| o.clone())
                .collect()
        })
        .unwrap_or_default();
    ok(
        StatusCode::OK,
        &json!({"kind": "List", "apiVersion": "v1",
                "metadata": {"resourceVersion": store.version.to_string()}, "items": items}),
    )
}

fn watch(api: &KubeApi, t: &Target, params: &Params) -> Response {
    let since: u64 = params
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut live = api.changes.subscribe();
    let matches = {
        let (kind, selection) = (t.kind.clone(), Selection::new(t, params));
        move |c: &Change| {
            let namespace = c.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default();
            c.kind == kind && selection.matches(namespace, &c.object)
        }
    };
    let backlog: Vec<Change> = api
        .lock()
        .log
        .iter()
        .filter(|c| c.version > since && matches(c))
        .cloned()
        .collect();
    let last = backlog.last().map(|c| c.version).unwrap_or(since);
    let line = |c: &Change| {
        let mut text = json!({"type": c.kind_of_change, "object": c.object}).to_string();
        text.push('\n');
        Ok::<_, std::io::Error>(Bytes::from(text))
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    tokio::spawn(async move {
        for c in &backlog {
            if tx.send(line(c)).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(c) if c.version > last && matches(&c) => {
                    if tx.send(line(&c)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Too far behind: end the watch; the client lists again.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(500, "InternalError", "watch"))
}

fn create(api: &KubeApi, t: &Target, mut object: Value, manager: &str) -> Response {
    if !object.is_object() {
        return status(400, "BadRequest", "the body is not an object");
    }
    let mut store = api.lock();
    let name = match object["metadata"]["name"].as_str() {
        Some(n) => n.to_string(),
        None => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{:05x}", store.version + 1),
            None => return status(422, "Invalid", "metadata.name: Required value"),
        },
    };
    let namespace = t.namespace.clone().unwrap_or_default();
    if store
        .objects
        .get(&t.kind)
        .is_some_and(|m| m.contains_key(&(namespace.clone(), name.clone())))
    {
        return status(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", t.kind),
        );
    }
    let meta = &mut object["metadata"];
    meta["name"] = json!(name);
    if !namespace.is_empty() {
        meta["namespace"] = json!(namespace);
    }
    meta["uid"] = json!(format!("uid-{name}-{}", store.version + 1));
    meta["creationTimestamp"] = json!(now());
    meta["generation"] = json!(1);
    if let Err(refused) = admit(&mut store, &t.kind, &name, &mut object) {
        return *refused;
    }
    let mut managed = fields::Managed::new();
    fields::updated(
        &mut managed,
        manager,
        &json!({}),
        &object,
        fields::Scope::Main,
    );
    fields::updated(
        &mut managed,
        manager,
        &json!({}),
        &object,
        fields::Scope::Status,
    );
    store
        .managed
        .insert((t.kind.clone(), (namespace.clone(), name)), managed);
    let stored = api.commit(&mut store, &t.kind, namespace, object, "ADDED");
    ok(StatusCode::CREATED, &stored)
}

fn current(store: &Store, t: &Target, name: &str) -> Option<Value> {
    store
        .objects
        .get(&t.kind)?
        .get(&(t.namespace.clone().unwrap_or_default(), name.to_string()))
        .cloned()
}

/// Stores `new` in place of `old`: a write to `status` changes only the status, any other
/// write keeps it; an object being deleted goes once its last finalizer is removed.
fn update(
    api: &KubeApi,
    store: &mut Store,
    t: &Target,
    old: &Value,
    mut new: Value,
    manager: &str,
) -> Response {
    if t.status {
        let mut merged = old.clone();
        merged["status"] = new["status"].clone();
        new = merged;
    } else if !old["status"].is_null() {
        new["status"] = old["status"].clone();
    }
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "namespace",
        "name",
    ] {
        if !old["metadata"][field].is_null() {
            new["metadata"][field] = old["metadata"][field].clone();
        }
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    new["metadata"]["generation"] = json!(if new["spec"] != old["spec"] {
        generation + 1
    } else {
        generation
    });
    let name = new["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Err(refused) = admit(store, &t.kind, &name, &mut new) {
        return *refused;
    }
    let key = (
        t.kind.clone(),
        (t.namespace.clone().unwrap_or_default(), name),
    );
    let scope = if t.status {
        fields::Scope::Status
    } else {
        fields::Scope::Main
    };
    fields::updated(
        store.managed.entry(key).or_default(),
        manager,
        old,
        &new,
        scope,
    );
    let deleting = !new["metadata"]["deletionTimestamp"].is_null();
    let finalized = new["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty());
    if deleting && finalized {
        api.remove(store, &t.kind, new.clone());
        return ok(StatusCode::OK, &new);
    }
    let namespace = t.namespace.clone().unwrap_or_default();
    let stored = api.commit(store, &t.kind, namespace, new, "MODIFIED");
    ok(StatusCode::OK, &stored)
}

fn replace(api: &KubeApi, t: &Target, name: &str, new: Value, manager: &str) -> Response {
    let mut store = api.lock();
    let Some(old) = current(&store, t, name) else {
        return status(404, "NotFound", &format!("{} {name} not found", t.kind));
    };
    let precondition = &new["metadata"]["resourceVersion"];
    if !precondition.is_null() && precondition != &old["metadata"]["resourceVersion"] {
        return status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                t.kind
            ),
        );
    }
    update(api, &mut store, t, &old, new, manager)
}

fn conflict(t: &Target, name: &str) -> Response {
    status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            t.kind
        ),
    )
}

/// Server-side apply of `body` by `manager`; creates the object if it does not exist.
fn apply(
    api: &KubeApi,
    t: &Target,
    name: &str,
    body: Value,
    manager: &str,
    force: bool,
) -> Response {
    let mut store = api.lock();
    let old = current(&store, t, name);
    if t.status && old.is_none() {
        return status(404, "NotFound", &format!("{} {name} not found", t.kind));
    }
    let precondition = &body["metadata"]["resourceVersion"];
    if let Some(old) = &old
        && !precondition.is_null()
        && precondition != &old["metadata"]["resourceVersion"]
    {
        return conflict(t, name);
    }
    let scope = if t.status {
        fields::Scope::Status
    } else {
        fields::Scope::Main
    };
    let key = (
        t.kind.clone(),
        (t.namespace.clone().unwrap_or_default(), name.to_string()),
    );
    let mut managed = store.managed.get(&key).cloned().unwrap_or_default();
    let base = old.clone().unwrap_or_else(|| {
        json!({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": name}})
    });
    let mut new = match fields::apply(&base, &mut managed, manager, &body, force, scope) {
        Ok(new) => new,
        Err(conflicts) => {
            let list: Vec<String> = conflicts
                .iter()
                .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
                .collect();
            return status(
                409,
                "Conflict",
                &format!(
                    "Apply failed with {} conflicts: {}",
                    list.len(),
                    list.join(", ")
                ),
            );
        }
    };
    match old {
        Some(old) => {
            if let Err(refused) = admit(&mut store, &t.kind, name, &mut new) {
                return *refused;
            }
            store.managed.insert(key, managed.clone());
            // The ownership is the apply's: update() below sees no change of its own.
            let response = update(api, &mut store, t, &old, new, manager);
            store.managed.insert(
                (
                    t.kind.clone(),
                    (t.namespace.clone().unwrap_or_default(), name.to_string()),
                ),
                managed,
            );
            response
        }
        None => {
            drop(store);
            let response = create(api, t, new, manager);
            let mut store = api.lock();
            if store.managed.contains_key(&key) {
                store.managed.insert(key, managed);
            }
            response
        }
    }
}

fn patch(
    api: &KubeApi,
    t: &Target,
    name: &str,
    body: Value,
    json_patch: bool,
    manager: &str,
) -> Response {
    let mut store = api.lock();
    let Some(old) = current(&store, t, name) else {
        return status(404, "NotFound", &format!("{} {name} not found", t.kind));
    };
    let precondition = &body["metadata"]["resourceVersion"];
    if !json_patch && !precondition.is_null() && precondition != &old["metadata"]["resourceVersion"]
    {
        return conflict(t, name);
    }
    let mut new = old.clone();
    if json_patch {
        // As the API server does, a `test` for null passes where the path does not exist
        // (kube-runtime's finalizer helper tests for no finalizers that way).
        let body = match body {
            Value::Array(ops) => Value::Array(
                ops.into_iter()
                    .filter(|op| {
                        let missing = op["path"]
                            .as_str()
                            .is_some_and(|p| old.pointer(p).is_none());
                        !(op["op"] == "test" && op["value"].is_null() && missing)
                    })
                    .collect(),
            ),
            other => other,
        };
        let operations: json_patch::Patch = match serde_json::from_value(body) {
            Ok(p) => p,
            Err(e) => return status(400, "BadRequest", &format!("JSON patch: {e}")),
        };
        if let Err(e) = json_patch::patch(&mut new, &operations) {
            return status(422, "Invalid", &format!("JSON patch: {e}"));
        }
    } else {
        json_patch::merge(&mut new, &body);
    }
    update(api, &mut store, t, &old, new, manager)
}

fn delete(api: &KubeApi, t: &Target, name: &str) -> Response {
    let mut store = api.lock();
    let Some(mut old) = current(&store, t, name) else {
        return status(404, "NotFound", &format!("{} {name} not found", t.kind));
    };
    let finalizers = old["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if finalizers {
        if old["metadata"]["deletionTimestamp"].is_null() {
            old["metadata"]["deletionTimestamp"] = json!(now());
            let namespace = t.namespace.clone().unwrap_or_default();
            old = api.commit(&mut store, &t.kind, namespace, old, "MODIFIED");
        }
        return ok(StatusCode::OK, &old);
    }
    // A namespace takes what is in it.
    if t.kind == "api/v1/namespaces" {
        let inside: Vec<(String, Value)> = store
            .objects
            .iter()
            .flat_map(|(k, m)| {
                m.iter()
                    .filter(|((ns, _), _)| ns == name)
                    .map(move |(_, o)| (k.clone(), o.clone()))
            })
            .collect();
        for (k, o) in inside {
            api.remove(&mut store, &k, o);
        }
    }
    api.remove(&mut store, &t.kind, old.clone());
    ok(StatusCode::OK, &old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_selectors_and_fields() {
        let t = parse_path("/apis/podvault.io/v1alpha1/namespaces/podvault/backups/b1/status")
            .expect("path");
        assert_eq!(t.kind, "apis/podvault.io/v1alpha1/backups");
        assert_eq!(t.namespace.as_deref(), Some("podvault"));
        assert_eq!(t.name.as_deref(), Some("b1"));
        assert!(t.status);
        let t = parse_path("/api/v1/namespaces/shop").expect("path");
        assert_eq!(
            (t.kind.as_str(), t.name.as_deref()),
            ("api/v1/namespaces", Some("shop"))
        );
        let t = parse_path("/api/v1/pods").expect("path");
        assert_eq!((t.kind.as_str(), t.namespace), ("api/v1/pods", None));
        let labels = json!({"app": "db", "podvault.io/repository-key": "shop"});
        assert!(labels_match(&labels, "app=db,podvault.io/repository-key"));
        assert!(!labels_match(&labels, "app!=db"));
        assert!(labels_match(&labels, "!tier"));
        let pod = json!({"spec": {"nodeName": "n1"}, "metadata": {"name": "p"}});
        assert!(fields_match(&pod, "spec.nodeName=n1,metadata.name=p"));
        assert!(!fields_match(&pod, "spec.nodeName=n2"));
    }
}
