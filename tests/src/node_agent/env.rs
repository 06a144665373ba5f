//! A container's environment, resolved as the kubelet resolves it: `envFrom` first, then `env`
//! in order, each `value` expanded against the variables defined before it, later definitions
//! replacing earlier ones. Errors carry the kubelet's own messages, since tests (and users)
//! compare them with what a real cluster shows.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::expand::expand;

/// What reading one Secret or ConfigMap gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(BTreeMap<String, String>),
    NotFound,
    /// Any other failure, as the API server's message.
    Failed(String),
}

/// The Secrets and ConfigMaps a container's env refers to, read from the pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub secrets: BTreeMap<String, Lookup>,
    pub config_maps: BTreeMap<String, Lookup>,
}

/// The names of the Secrets and ConfigMaps a container's env refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
}

/// What the env can read about the pod beyond its spec: its addresses on this node.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
}

/// Why a container cannot be configured; shown as the `CreateContainerConfigError` message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound { namespace: String, name: String, key: String },
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound { namespace: String, name: String, key: String },
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
    #[error("env {0}: resourceFieldRef is not supported on this test node")]
    UnsupportedResourceField(String),
    #[error("{0}")]
    Read(String),
}

/// The resolved variables, in the order they were first defined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Defines `name`, replacing an earlier value in place.
    pub fn set(&mut self, name: &str, value: String) {
        match self.vars.iter_mut().find(|(k, _)| k == name) {
            Some(var) => var.1 = value,
            None => self.vars.push((name.to_string(), value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Expands `$(VAR)` references in `input` against these variables.
    pub fn expand(&self, input: &str) -> String {
        expand(input, |name| self.get(name))
    }

    /// Every value passed through `f` (used to map container paths to host paths).
    pub fn map_values(self, f: impl Fn(&str) -> String) -> Self {
        Self { vars: self.vars.into_iter().map(|(k, v)| (k, f(&v))).collect() }
    }
}

/// The Secrets and ConfigMaps that `container`'s env and envFrom name.
pub fn references(container: &Container) -> References {
    let mut refs = References::default();
    for from in container.env_from.iter().flatten() {
        if let Some(s) = &from.secret_ref {
            refs.secrets.insert(s.name.clone());
        }
        if let Some(c) = &from.config_map_ref {
            refs.config_maps.insert(c.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else { continue };
        if let Some(s) = &from.secret_key_ref {
            refs.secrets.insert(s.name.clone());
        }
        if let Some(c) = &from.config_map_key_ref {
            refs.config_maps.insert(c.name.clone());
        }
    }
    refs
}

/// `container`'s environment. A reference marked `optional` that does not resolve leaves its
/// variable (or its envFrom block) out; any other failed reference is a [`ConfigError`].
pub fn resolve(container: &Container, facts: PodFacts<'_>, sources: &Sources) -> Result<Env, ConfigError> {
    let namespace = facts.pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut env = Env::default();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let mut blocks = Vec::new();
        if let Some(s) = &from.secret_ref {
            blocks.push(object(&sources.secrets, &s.name, s.optional, Kind::Secret)?);
        }
        if let Some(c) = &from.config_map_ref {
            blocks.push(object(&sources.config_maps, &c.name, c.optional, Kind::ConfigMap)?);
        }
        for (key, value) in blocks.into_iter().flatten().flatten() {
            // The kubelet skips keys that are not valid variable names (with an event).
            if !key.is_empty() && !key.contains('=') {
                env.set(&format!("{prefix}{key}"), value.clone());
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = value_of(var, &env, facts, namespace, sources)? {
            env.set(&var.name, value);
        }
    }
    Ok(env)
}

#[derive(Clone, Copy)]
enum Kind {
    Secret,
    ConfigMap,
}

/// The data of a referenced object; `None` when it is absent and `optional`.
fn object<'s>(
    store: &'s BTreeMap<String, Lookup>,
    name: &str,
    optional: Option<bool>,
    kind: Kind,
) -> Result<Option<&'s BTreeMap<String, String>>, ConfigError> {
    match store.get(name) {
        Some(Lookup::Found(data)) => Ok(Some(data)),
        _ if optional == Some(true) => Ok(None),
        Some(Lookup::Failed(message)) => Err(ConfigError::Read(message.clone())),
        Some(Lookup::NotFound) | None => Err(match kind {
            Kind::Secret => ConfigError::SecretNotFound(name.to_string()),
            Kind::ConfigMap => ConfigError::ConfigMapNotFound(name.to_string()),
        }),
    }
}

/// One variable's value; `None` when an optional reference leaves it out.
fn value_of(
    var: &EnvVar,
    env: &Env,
    facts: PodFacts<'_>,
    namespace: &str,
    sources: &Sources,
) -> Result<Option<String>, ConfigError> {
    if let Some(value) = var.value.as_deref().filter(|v| !v.is_empty()) {
        return Ok(Some(env.expand(value)));
    }
    let Some(from) = &var.value_from else { return Ok(Some(String::new())) };
    if let Some(field) = &from.field_ref {
        return field_value(&field.field_path, facts).map(Some);
    }
    if from.resource_field_ref.is_some() {
        return Err(ConfigError::UnsupportedResourceField(var.name.clone()));
    }
    if let Some(sel) = &from.secret_key_ref {
        let Some(data) = object(&sources.secrets, &sel.name, sel.optional, Kind::Secret)? else {
            return Ok(None);
        };
        return match data.get(&sel.key) {
            Some(v) => Ok(Some(v.clone())),
            None if sel.optional == Some(true) => Ok(None),
            None => Err(ConfigError::SecretKeyNotFound {
                namespace: namespace.to_string(),
                name: sel.name.clone(),
                key: sel.key.clone(),
            }),
        };
    }
    if let Some(sel) = &from.config_map_key_ref {
        let Some(data) = object(&sources.config_maps, &sel.name, sel.optional, Kind::ConfigMap)? else {
            return Ok(None);
        };
        return match data.get(&sel.key) {
            Some(v) => Ok(Some(v.clone())),
            None if sel.optional == Some(true) => Ok(None),
            None => Err(ConfigError::ConfigMapKeyNotFound {
                namespace: namespace.to_string(),
                name: sel.name.clone(),
                key: sel.key.clone(),
            }),
        };
    }
    Ok(Some(String::new()))
}

/// A downward-API field, as the kubelet reads it for env.
pub fn field_value(path: &str, facts: PodFacts<'_>) -> Result<String, ConfigError> {
    let meta = &facts.pod.metadata;
    let spec = facts.pod.spec.as_ref();
    let text = |v: Option<&String>| v.cloned().unwrap_or_default();
    let value = match path {
        "metadata.name" => text(meta.name.as_ref()),
        "metadata.namespace" => text(meta.namespace.as_ref()),
        "metadata.uid" => text(meta.uid.as_ref()),
        "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
        "spec.serviceAccountName" => text(spec.and_then(|s| s.service_account_name.as_ref())),
        "status.podIP" | "status.podIPs" => facts.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        _ => {
            if let Some(key) = subscript(path, "metadata.labels") {
                text(meta.labels.as_ref().and_then(|l| l.get(key)))
            } else if let Some(key) = subscript(path, "metadata.annotations") {
                text(meta.annotations.as_ref().and_then(|a| a.get(key)))
            } else {
                return Err(ConfigError::UnsupportedFieldPath(path.to_string()));
            }
        }
    };
    Ok(value)
}

/// `key` from `FIELD['key']`.
fn subscript<'p>(path: &'p str, field: &str) -> Option<&'p str> {
    path.strip_prefix(field)?.strip_prefix("['")?.strip_suffix("']")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_agent::fixtures::PodBuilder;

    fn resolve_pod(pod: &Pod, sources: &Sources) -> Result<Env, ConfigError> {
        let facts = PodFacts { pod, pod_ip: "127.1.0.2", host_ip: "127.0.0.1" };
        resolve(&pod.spec.as_ref().expect("spec").containers[0], facts, sources)
    }

    fn found(pairs: &[(&str, &str)]) -> Lookup {
        Lookup::Found(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn secrets(name: &str, lookup: Lookup) -> Sources {
        Sources { secrets: BTreeMap::from([(name.to_string(), lookup)]), ..Default::default() }
    }

    #[test]
    fn values_expand_variables_defined_before_them() {
        let pod = PodBuilder::new("p")
            .env("A", "one")
            .env("B", "$(A)-two-$(C)")
            .env("C", "three")
            .env("D", "$$(A)")
            .build();
        let env = resolve_pod(&pod, &Sources::default()).expect("resolves");
        assert_eq!(env.get("B"), Some("one-two-$(C)"));
        assert_eq!(env.get("D"), Some("$(A)"));
    }

    #[test]
    fn a_later_definition_replaces_an_earlier_one_in_place() {
        let pod = PodBuilder::new("p").env("A", "1").env("B", "2").env("A", "3").build();
        let env = resolve_pod(&pod, &Sources::default()).expect("resolves");
        assert_eq!(env.iter().collect::<Vec<_>>(), vec![("A", "3"), ("B", "2")]);
    }

    #[test]
    fn field_refs_read_the_pod_and_its_addresses() {
        let pod = PodBuilder::new("p")
            .label("app", "x")
            .field_env("IP", "status.podIP")
            .field_env("NAME", "metadata.name")
            .field_env("NS", "metadata.namespace")
            .field_env("APP", "metadata.labels['app']")
            .field_env("NODE", "spec.nodeName")
            .field_env("HOST", "status.hostIP")
            .build();
        let env = resolve_pod(&pod, &Sources::default()).expect("resolves");
        let got: Vec<_> =
            ["IP", "NAME", "NS", "APP", "NODE", "HOST"].map(|k| env.get(k).unwrap_or("-")).into();
        assert_eq!(got, ["127.1.0.2", "p", "ns", "x", "barge-node-0", "127.0.0.1"]);
    }

    #[test]
    fn an_unknown_field_path_is_a_config_error() {
        let pod = PodBuilder::new("p").field_env("X", "spec.bogus").build();
        let err = resolve_pod(&pod, &Sources::default()).expect_err("unsupported");
        assert_eq!(err.to_string(), "unsupported fieldPath: spec.bogus");
    }

    #[test]
    fn a_missing_secret_fails_with_the_kubelets_message() {
        let pod = PodBuilder::new("p").secret_env("KEY", "creds", "key", false).build();
        let err = resolve_pod(&pod, &secrets("creds", Lookup::NotFound)).expect_err("missing");
        assert_eq!(err.to_string(), r#"secret "creds" not found"#);
        let err = resolve_pod(&pod, &Sources::default()).expect_err("never read");
        assert_eq!(err.to_string(), r#"secret "creds" not found"#);
    }

    #[test]
    fn a_missing_secret_key_fails_with_the_kubelets_message() {
        let pod = PodBuilder::new("p").secret_env("KEY", "creds", "key", false).build();
        let err = resolve_pod(&pod, &secrets("creds", found(&[("other", "v")]))).expect_err("missing key");
        assert_eq!(err.to_string(), "couldn't find key key in Secret ns/creds");
    }

    #[test]
    fn an_optional_secret_that_is_missing_leaves_its_variable_out() {
        let pod = PodBuilder::new("p")
            .secret_env("TOKEN", "creds", "token", true)
            .secret_env("ID", "creds", "id", false)
            .build();
        let env = resolve_pod(&pod, &secrets("creds", found(&[("id", "abc")]))).expect("resolves");
        assert_eq!((env.get("TOKEN"), env.get("ID")), (None, Some("abc")));
        let pod = PodBuilder::new("p").secret_env("TOKEN", "gone", "token", true).build();
        assert_eq!(resolve_pod(&pod, &secrets("gone", Lookup::NotFound)), Ok(Env::default()));
    }

    #[test]
    fn config_map_keys_resolve_and_missing_ones_fail_like_the_kubelet() {
        let pod = PodBuilder::new("p").config_map_env("MODE", "settings", "mode").build();
        let sources = Sources {
            config_maps: BTreeMap::from([("settings".to_string(), found(&[("mode", "fast")]))]),
            ..Default::default()
        };
        assert_eq!(resolve_pod(&pod, &sources).expect("resolves").get("MODE"), Some("fast"));
        let err = resolve_pod(&pod, &Sources::default()).expect_err("missing");
        assert_eq!(err.to_string(), r#"configmap "settings" not found"#);
    }

    #[test]
    fn env_from_comes_first_with_its_prefix_and_env_overrides_it() {
        let pod =
            PodBuilder::new("p").env_from_secret("creds", "S_").env("S_A", "mine").env("B", "$(S_B)").build();
        let env = resolve_pod(&pod, &secrets("creds", found(&[("A", "1"), ("B", "2")]))).expect("resolves");
        assert_eq!(env.iter().collect::<Vec<_>>(), vec![("S_A", "mine"), ("S_B", "2"), ("B", "2")]);
    }

    #[test]
    fn references_name_every_secret_and_config_map() {
        let pod = PodBuilder::new("p")
            .secret_env("A", "s1", "k", false)
            .env_from_secret("s2", "")
            .config_map_env("B", "c1", "k")
            .build();
        let refs = references(&pod.spec.as_ref().expect("spec").containers[0]);
        assert_eq!(refs.secrets.into_iter().collect::<Vec<_>>(), ["s1", "s2"]);
        assert_eq!(refs.config_maps.into_iter().collect::<Vec<_>>(), ["c1"]);
    }
}
