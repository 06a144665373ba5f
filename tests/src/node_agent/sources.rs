//! Reads the Secrets and ConfigMaps a container's env refers to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use super::env::{Lookup, References, Sources};

/// Reads every referenced object from `namespace`. A failed read is recorded, not returned:
/// whether it matters depends on whether the reference is optional.
pub async fn fetch(client: &Client, namespace: &str, refs: &References) -> Sources {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut sources = Sources::default();
    for name in &refs.secrets {
        let lookup = lookup(secrets.get_opt(name).await, |s: Secret| {
            let data = s.data.unwrap_or_default();
            data.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned())).collect()
        });
        sources.secrets.insert(name.clone(), lookup);
    }
    for name in &refs.config_maps {
        let lookup = lookup(config_maps.get_opt(name).await, |c: ConfigMap| c.data.unwrap_or_default());
        sources.config_maps.insert(name.clone(), lookup);
    }
    sources
}

fn lookup<K>(read: kube::Result<Option<K>>, data: impl FnOnce(K) -> BTreeMap<String, String>) -> Lookup {
    match read {
        Ok(Some(obj)) => Lookup::Found(data(obj)),
        Ok(None) => Lookup::NotFound,
        Err(kube::Error::Api(status)) => Lookup::Failed(status.message),
        Err(e) => Lookup::Failed(e.to_string()),
    }
}
