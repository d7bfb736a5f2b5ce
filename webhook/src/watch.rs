//! Keeps the handler's state current from the API server: the PodVolumeRestores not yet
//! started, and the restore helper's ConfigMap (found by its labels). Requests never wait
//! on the API server; the webhook is ready once both caches have synced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use kube::{Client, Resource, ResourceExt};
use podvault_api::crd::{Phase, PodVolumeRestore};

use crate::config::{HelperConfig, HelperSettings, from_data, is_helper_config};
use crate::server::Shared;

/// The restores a new pod may be waiting for: not started, no pod chosen yet.
pub fn pending(all: impl IntoIterator<Item = PodVolumeRestore>) -> Vec<PodVolumeRestore> {
    all.into_iter()
        .filter(|p| p.spec.pod.is_none() && p.status.as_ref().is_none_or(|s| s.phase == Phase::New))
        .collect()
}

/// The helper settings from the ConfigMaps of the install namespace: the first one (by
/// name) with podvault's or Velero's labels, or the defaults.
pub fn helper_settings<'a>(
    maps: impl IntoIterator<Item = &'a ConfigMap>,
    version: &str,
) -> (HelperSettings, Option<ConfigMap>) {
    let mut found: Vec<&ConfigMap> = maps
        .into_iter()
        .filter(|m| is_helper_config(m.labels()))
        .collect();
    found.sort_by_key(|m| m.name_any());
    match found.first() {
        Some(map) => {
            let empty = BTreeMap::new();
            let settings = from_data(map.data.as_ref().unwrap_or(&empty), version);
            (settings, Some((*map).clone()))
        }
        None => (
            HelperSettings {
                config: HelperConfig::defaults(version),
                warnings: Vec::new(),
            },
            None,
        ),
    }
}

/// Watches PodVolumeRestores and ConfigMaps of `namespace` until the process ends,
/// updating `shared` and marking it ready once both have been listed. Problems of the
/// ConfigMap are published as Warning Events on it (once per change).
pub async fn run(
    client: Client,
    shared: Arc<Shared>,
    namespace: String,
    version: String,
    recorder: Option<Recorder>,
) {
    let restores_synced = Arc::new(AtomicBool::new(false));
    let maps_synced = Arc::new(AtomicBool::new(false));
    let mark_ready = {
        let (shared, a, b) = (shared.clone(), restores_synced.clone(), maps_synced.clone());
        move || {
            if a.load(Ordering::Acquire) && b.load(Ordering::Acquire) {
                shared.ready.store(true, Ordering::Release);
            }
        }
    };

    let restores = {
        let shared = shared.clone();
        let mark_ready = mark_ready.clone();
        mirror(
            Api::<PodVolumeRestore>::namespaced(client.clone(), &namespace),
            restores_synced,
            move |known: &BTreeMap<String, PodVolumeRestore>| {
                shared.state.set_pending(pending(known.values().cloned()));
                mark_ready();
                async {}
            },
        )
    };
    // The last problem reported: (ConfigMap version, warnings).
    let mut reported: Option<(String, Vec<String>)> = None;
    let maps = mirror(
        Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        maps_synced,
        move |known: &BTreeMap<String, ConfigMap>| {
            let (settings, source) = helper_settings(known.values(), &version);
            let warnings = settings.warnings.clone();
            *shared
                .state
                .config
                .write()
                .unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
            mark_ready();
            // Each new problem of the ConfigMap is reported once, as a Warning Event on it.
            let news = source.filter(|_| !warnings.is_empty()).filter(|map| {
                let key = (map.resource_version().unwrap_or_default(), warnings.clone());
                let new = reported.as_ref() != Some(&key);
                reported = Some(key);
                new
            });
            let recorder = recorder.clone();
            async move {
                let Some(map) = news else { return };
                for w in &warnings {
                    tracing::warn!(configmap = %map.name_any(), "restore helper setting: {w}");
                }
                if let Some(recorder) = &recorder {
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "InvalidHelperSetting".into(),
                        note: Some(warnings.join("; ").chars().take(1000).collect()),
                        action: "Parse".into(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&event, &map.object_ref(&())).await {
                        tracing::warn!("event on ConfigMap {} not published: {e}", map.name_any());
                    }
                }
            }
        },
    );
    tokio::join!(restores, maps);
}

/// Mirrors the objects of `api` into a map by name, calling `changed` with the whole map
/// after the first full list (then `synced` is set) and after every change.
async fn mirror<K, F, Fut>(api: Api<K>, synced: Arc<AtomicBool>, mut changed: F)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    F: FnMut(&BTreeMap<String, K>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut known: BTreeMap<String, K> = BTreeMap::new();
    let mut initial: BTreeMap<String, K> = BTreeMap::new();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(WatchEvent::Init) => {
                initial.clear();
                continue;
            }
            Ok(WatchEvent::InitApply(o)) => {
                initial.insert(o.name_any(), o);
                continue;
            }
            Ok(WatchEvent::InitDone) => {
                known = std::mem::take(&mut initial);
                synced.store(true, Ordering::Release);
            }
            Ok(WatchEvent::Apply(o)) => {
                known.insert(o.name_any(), o);
            }
            Ok(WatchEvent::Delete(o)) => {
                known.remove(&o.name_any());
            }
            Err(e) => {
                tracing::warn!("watching {}: {e}", K::plural(&K::DynamicType::default()));
                continue;
            }
        }
        changed(&known).await;
    }
}
