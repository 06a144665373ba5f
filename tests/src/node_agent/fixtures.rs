//! Test pods, built up one trait at a time: `PodBuilder::new("p").env("A", "1").build()`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapKeySelector, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, ObjectFieldSelector, Pod, PodSpec, SecretEnvSource, SecretKeySelector, Volume, VolumeMount,
};
use kube::api::ObjectMeta;

pub struct PodBuilder {
    pod: Pod,
}

impl PodBuilder {
    /// Pod `name` in namespace `ns`, bound to `barge-node-0`, with one container `main`.
    pub fn new(name: &str) -> Self {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("barge-node-0".into()),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("ghcr.io/barge-dev/barge-runner:dev".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        Self { pod }
    }

    pub fn build(self) -> Pod {
        self.pod
    }

    fn spec(&mut self) -> &mut PodSpec {
        self.pod.spec.as_mut().expect("the builder always has a spec")
    }

    fn container(&mut self) -> &mut Container {
        &mut self.spec().containers[0]
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.pod.metadata.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    pub fn command(mut self, command: &[&str]) -> Self {
        self.container().command = Some(command.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.container().args = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    fn push_env(mut self, var: EnvVar) -> Self {
        self.container().env.get_or_insert_with(Vec::new).push(var);
        self
    }

    pub fn env(self, name: &str, value: &str) -> Self {
        self.push_env(EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() })
    }

    fn env_from_source(self, name: &str, source: EnvVarSource) -> Self {
        self.push_env(EnvVar { name: name.into(), value_from: Some(source), ..Default::default() })
    }

    pub fn field_env(self, name: &str, path: &str) -> Self {
        let field_ref = ObjectFieldSelector { field_path: path.into(), ..Default::default() };
        self.env_from_source(name, EnvVarSource { field_ref: Some(field_ref), ..Default::default() })
    }

    pub fn secret_env(self, name: &str, secret: &str, key: &str, optional: bool) -> Self {
        let sel =
            SecretKeySelector { name: secret.into(), key: key.into(), optional: optional.then_some(true) };
        self.env_from_source(name, EnvVarSource { secret_key_ref: Some(sel), ..Default::default() })
    }

    pub fn config_map_env(self, name: &str, config_map: &str, key: &str) -> Self {
        let sel = ConfigMapKeySelector { name: config_map.into(), key: key.into(), optional: None };
        self.env_from_source(name, EnvVarSource { config_map_key_ref: Some(sel), ..Default::default() })
    }

    pub fn env_from_secret(mut self, secret: &str, prefix: &str) -> Self {
        let from = EnvFromSource {
            prefix: (!prefix.is_empty()).then(|| prefix.into()),
            secret_ref: Some(SecretEnvSource { name: secret.into(), optional: None }),
            ..Default::default()
        };
        self.container().env_from.get_or_insert_with(Vec::new).push(from);
        self
    }

    fn volume(mut self, volume: Volume, path: &str) -> Self {
        let mount = VolumeMount { name: volume.name.clone(), mount_path: path.into(), ..Default::default() };
        self.container().volume_mounts.get_or_insert_with(Vec::new).push(mount);
        self.spec().volumes.get_or_insert_with(Vec::new).push(volume);
        self
    }

    pub fn empty_dir(self, name: &str, path: &str) -> Self {
        let v = Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        };
        self.volume(v, path)
    }

    pub fn config_map_volume(self, name: &str, path: &str) -> Self {
        let source = ConfigMapVolumeSource { name: name.into(), ..Default::default() };
        self.volume(Volume { name: name.into(), config_map: Some(source), ..Default::default() }, path)
    }

    pub fn generation(mut self, generation: i64) -> Self {
        self.pod.metadata.generation = Some(generation);
        self
    }
}
