//! The restore helper's settings, from the labeled ConfigMap of the install namespace. Keys,
//! defaults and parsing follow Velero's guide, so a Velero user's ConfigMap works unchanged:
//! `image`, `cpuRequest`, `memRequest`, `cpuLimit`, `memLimit` (defaults 100m, 128Mi, 100m,
//! 128Mi; "0" means unbounded), `secCtxRunAsUser`, `secCtxRunAsGroup`,
//! `secCtxAllowPrivilegeEscalation`, and `secCtx` (YAML, wins over the three before it for
//! the fields it sets). A value that does not parse, or a request above its limit, falls back
//! to the defaults with a warning: a bad setting never blocks pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The labels that mark the ConfigMap: podvault's pair, or Velero's.
pub const LABELS: [(&str, &str, &str); 2] = [
    (
        "podvault.io/plugin-config",
        "podvault.io/pod-volume-restore",
        "RestoreItemAction",
    ),
    (
        "velero.io/plugin-config",
        "velero.io/pod-volume-restore",
        "RestoreItemAction",
    ),
];

/// The image repository used when the ConfigMap names none.
pub const DEFAULT_IMAGE: &str = "ghcr.io/podvault/podvault";

/// What the restore helper container gets.
#[derive(Clone, Debug, PartialEq)]
pub struct HelperConfig {
    /// The image, always with a tag or digest.
    pub image: String,
    /// Requests and limits (absent ones are unbounded).
    pub resources: ResourceRequirements,
    /// The security context the ConfigMap sets; `None`: derived from the pod.
    pub security_context: Option<SecurityContext>,
}

impl HelperConfig {
    /// The settings without a ConfigMap.
    pub fn defaults(version: &str) -> HelperConfig {
        from_data(&BTreeMap::new(), version).config
    }
}

/// Whether a ConfigMap's labels mark it as the helper's settings.
pub fn is_helper_config(labels: &BTreeMap<String, String>) -> bool {
    LABELS.iter().any(|(marker, kind, value)| {
        labels.contains_key(*marker) && labels.get(*kind).map(String::as_str) == Some(*value)
    })
}

/// Whether `image` is one of Velero's (its helper `velero/velero-restore-helper`, or
/// `velero/velero`, from any registry): copied over from a Velero install, it cannot run
/// podvault's helper.
pub fn is_velero_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let name = last.split(':').next().unwrap_or(last);
    name == "velero" || name.starts_with("velero-")
}

/// Adds `version` as the tag of an image that has neither a tag nor a digest.
pub fn with_tag(image: &str, version: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:{version}")
    }
}

/// A Kubernetes quantity in base units (cores, bytes), for comparing a request with its
/// limit. `None` if it does not parse.
pub fn quantity_value(text: &str) -> Option<f64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() || number.starts_with('-') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let v = value * factor;
    v.is_finite().then_some(v)
}

/// One resource value: `Ok(None)` for "0" (unbounded), `Err` if it does not parse.
fn resource(value: &str) -> Result<Option<Quantity>, ()> {
    match quantity_value(value) {
        Some(0.0) => Ok(None),
        Some(_) => Ok(Some(Quantity(value.trim().to_string()))),
        None => Err(()),
    }
}

/// The helper settings and the warnings their ConfigMap raised.
#[derive(Debug, Clone)]
pub struct HelperSettings {
    /// What the injected helper runs with.
    pub config: HelperConfig,
    /// What was wrong with the ConfigMap (each one is said in the admission response).
    pub warnings: Vec<String>,
}

/// The helper's image from the `image` key, tagged with `version` when it has no tag;
/// the default for a missing, Velero or malformed one (with a warning).
fn image_of(data: &BTreeMap<String, String>, version: &str, warnings: &mut Vec<String>) -> String {
    let image = data
        .get("image")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    match image {
        Some(i) if is_velero_image(i) => {
            warnings.push(format!(
                "image {i:?} is Velero's, which has no `podvault restore-wait`; using \
                 podvault's image (remove the key, or name a podvault image)"
            ));
            with_tag(DEFAULT_IMAGE, version)
        }
        Some(i) if !i.contains(char::is_whitespace) => with_tag(i, version),
        Some(i) => {
            warnings.push(format!(
                "image {i:?} is not an image reference; using the default"
            ));
            with_tag(DEFAULT_IMAGE, version)
        }
        None => with_tag(DEFAULT_IMAGE, version),
    }
}

/// One resource's request and limit (`<name>Request`, `<name>Limit`; `name` is `cpu` or
/// `mem`): each from its key or `default`; a value that is no quantity, or a request
/// above its limit, falls back to the defaults with a warning.
fn request_and_limit(
    data: &BTreeMap<String, String>,
    name: &str,
    default: &str,
    warnings: &mut Vec<String>,
) -> (Option<Quantity>, Option<Quantity>) {
    let fallback = resource(default).unwrap_or(None);
    let mut pick = |key: String| match data.get(&key) {
        None => fallback.clone(),
        Some(v) => resource(v).unwrap_or_else(|()| {
            warnings.push(format!(
                "{key} {v:?} is not a quantity; using the default {default}"
            ));
            fallback.clone()
        }),
    };
    let request = pick(format!("{name}Request"));
    let limit = pick(format!("{name}Limit"));
    if let (Some(r), Some(l)) = (&request, &limit)
        && quantity_value(&r.0).unwrap_or(0.0) > quantity_value(&l.0).unwrap_or(f64::MAX)
    {
        warnings.push(format!(
            "{name}Request {} is above {name}Limit {}; using the defaults",
            r.0, l.0
        ));
        return (fallback.clone(), fallback);
    }
    (request, limit)
}

/// The helper's settings from a ConfigMap's data, and a warning for each value that was
/// ignored.
pub fn from_data(data: &BTreeMap<String, String>, version: &str) -> HelperSettings {
    let mut warnings = Vec::new();
    let image = image_of(data, version, &mut warnings);
    let (cpu_request, cpu_limit) = request_and_limit(data, "cpu", "100m", &mut warnings);
    let (mem_request, mem_limit) = request_and_limit(data, "mem", "128Mi", &mut warnings);
    let map = |cpu: Option<Quantity>, mem: Option<Quantity>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", mem)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    let resources = ResourceRequirements {
        requests: map(cpu_request, mem_request),
        limits: map(cpu_limit, mem_limit),
        ..ResourceRequirements::default()
    };
    let security_context = security_context(data, &mut warnings);
    HelperSettings {
        config: HelperConfig {
            image,
            resources,
            security_context,
        },
        warnings,
    }
}

fn security_context(
    data: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Option<SecurityContext> {
    let mut set = false;
    let mut ctx = SecurityContext::default();
    let mut id = |key: &str| -> Option<i64> {
        let v = data.get(key)?;
        match v.trim().parse::<i64>() {
            Ok(n) if n >= 0 => {
                set = true;
                Some(n)
            }
            _ => {
                warnings.push(format!("{key} {v:?} is not a user or group id; ignored"));
                None
            }
        }
    };
    ctx.run_as_user = id("secCtxRunAsUser");
    ctx.run_as_group = id("secCtxRunAsGroup");
    if let Some(v) = data.get("secCtxAllowPrivilegeEscalation") {
        match v.trim() {
            "true" => ctx.allow_privilege_escalation = Some(true),
            "false" => ctx.allow_privilege_escalation = Some(false),
            _ => warnings.push(format!(
                "secCtxAllowPrivilegeEscalation {v:?} is not true or false; ignored"
            )),
        }
        set |= ctx.allow_privilege_escalation.is_some();
    }
    if let Some(yaml) = data.get("secCtx").filter(|y| !y.trim().is_empty()) {
        match serde_yaml::from_str::<SecurityContext>(yaml) {
            Ok(full) => {
                let (user, group, escalation) = (
                    ctx.run_as_user,
                    ctx.run_as_group,
                    ctx.allow_privilege_escalation,
                );
                ctx = full;
                ctx.run_as_user = ctx.run_as_user.or(user);
                ctx.run_as_group = ctx.run_as_group.or(group);
                ctx.allow_privilege_escalation = ctx.allow_privilege_escalation.or(escalation);
                set = true;
            }
            Err(e) => warnings.push(format!("secCtx is not a securityContext: {e}; ignored")),
        }
    }
    set.then_some(ctx)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_configmap_is_read_as_velero_documents_it() {
        let labels = |pairs: &[(&str, &str)]| data(pairs);
        assert!(is_helper_config(&labels(&[
            ("velero.io/plugin-config", ""),
            ("velero.io/pod-volume-restore", "RestoreItemAction")
        ])));
        assert!(is_helper_config(&labels(&[
            ("podvault.io/plugin-config", ""),
            ("podvault.io/pod-volume-restore", "RestoreItemAction")
        ])));
        assert!(!is_helper_config(&labels(&[(
            "podvault.io/plugin-config",
            ""
        )])));

        let HelperSettings {
            config: c,
            warnings,
        } = from_data(
            &data(&[
                ("image", "registry.local:5000/tools/helper"),
                ("cpuRequest", "200m"),
                ("memRequest", "0"),
                ("cpuLimit", "0.5"),
                ("memLimit", "1Gi"),
                ("secCtxRunAsUser", "1001"),
                ("secCtxRunAsGroup", "999"),
                ("secCtxAllowPrivilegeEscalation", "false"),
                (
                    "secCtx",
                    "capabilities:\n  drop: [ALL]\nreadOnlyRootFilesystem: true\nrunAsUser: 2002\n",
                ),
            ]),
            "0.1.0",
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            c.image, "registry.local:5000/tools/helper:0.1.0",
            "a registry port is not a tag"
        );
        assert_eq!(
            serde_json::to_value(&c.resources).expect("json"),
            json!({"requests": {"cpu": "200m"}, "limits": {"cpu": "0.5", "memory": "1Gi"}}),
            "\"0\" is unbounded: no value"
        );
        assert_eq!(
            serde_json::to_value(&c.security_context).expect("json"),
            json!({"capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true,
                   "runAsUser": 2002, "runAsGroup": 999, "allowPrivilegeEscalation": false}),
            "secCtx wins where it sets a field; the others fill the rest"
        );
        assert_eq!(
            from_data(&data(&[("image", "helper@sha256:abcd")]), "0.1.0")
                .config
                .image,
            "helper@sha256:abcd"
        );

        // Bad values fall back to the defaults with a warning each; none blocks a pod.
        let HelperSettings {
            config: c,
            warnings,
        } = from_data(
            &data(&[
                ("cpuRequest", "lots"),
                ("memRequest", "2Gi"),
                ("memLimit", "1Gi"),
                ("secCtxRunAsUser", "nobody"),
                ("secCtxAllowPrivilegeEscalation", "maybe"),
                ("secCtx", "runAsUser: [1"),
            ]),
            "0.1.0",
        );
        assert_eq!(c.resources, HelperConfig::defaults("0.1.0").resources);
        assert_eq!(c.security_context, None);
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        assert!(warnings[0].contains("cpuRequest \"lots\""), "{warnings:?}");
        assert!(
            warnings[1].contains("memRequest 2Gi is above memLimit 1Gi"),
            "{warnings:?}"
        );
    }

    #[test]
    fn quantities_compare_in_base_units() {
        for (text, value) in [
            ("100m", 0.1),
            ("0.5", 0.5),
            ("2", 2.0),
            ("128Mi", 134_217_728.0),
            ("1G", 1e9),
            ("1e3", 1000.0),
            ("1.5Gi", 1_610_612_736.0),
        ] {
            assert_eq!(quantity_value(text), Some(value), "{text}");
        }
        for bad in ["", "Mi", "-1", "1Q", "1e", "1.2.3"] {
            assert_eq!(quantity_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn velero_helper_images_copied_over_are_replaced_with_a_warning() {
        for image in [
            "velero/velero-restore-helper:v1.14.0",
            "velero/velero-restore-helper",
            "docker.io/velero/velero:v1.15.0",
            "registry.local:5000/mirror/velero-restore-helper@sha256:0123",
        ] {
            let HelperSettings {
                config: c,
                warnings,
            } = from_data(&data(&[("image", image)]), "0.1.0");
            assert_eq!(c.image, "ghcr.io/podvault/podvault:0.1.0", "{image}");
            assert!(
                warnings.len() == 1 && warnings[0].contains("Velero's"),
                "{image}: {warnings:?}"
            );
        }
        for image in [
            "registry.local:5000/tools/podvault",
            "mirror/veleroish:1",
            "acme/helper:velero",
        ] {
            let HelperSettings {
                config: c,
                warnings,
            } = from_data(&data(&[("image", image)]), "0.1.0");
            assert!(warnings.is_empty(), "{image}: {warnings:?}");
            assert!(c.image.starts_with(image), "{image}");
        }
    }
}
