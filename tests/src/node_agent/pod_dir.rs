//! Where a pod lives on this node, and how the container's paths map into it.
//!
//! Each pod gets `STATE/pods/<namespace>_<name>_<uid>/` with its emptyDir volumes under
//! `volumes/<volume>/`, its termination message file and its container log. A process sees the
//! host's filesystem, not the container's, so the paths a pod spells in its args and env (mount
//! paths, `/dev/termination-log`) are rewritten to these host paths.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

/// Where Kubernetes puts a container's termination message unless the container says otherwise.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// The folder of one pod on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDir {
    root: PathBuf,
}

impl PodDir {
    pub fn new(state_dir: &Path, namespace: &str, name: &str, uid: &str) -> Self {
        Self { root: state_dir.join("pods").join(format!("{namespace}_{name}_{uid}")) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn volume(&self, volume: &str) -> PathBuf {
        self.root.join("volumes").join(volume)
    }

    pub fn termination_log(&self) -> PathBuf {
        self.root.join("termination-log")
    }

    pub fn container_log(&self) -> PathBuf {
        self.root.join("container.log")
    }
}

/// Container paths and the host paths that stand in for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMap {
    /// Longest container path first, so that `/a/b` wins over `/a`.
    entries: Vec<(String, PathBuf)>,
}

/// The container's paths on this node, and what of the pod's volumes it cannot provide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    pub paths: PathMap,
    /// Host folders to create before the process starts.
    pub dirs: Vec<PathBuf>,
    /// The host path of the container's termination message file.
    pub termination_log: PathBuf,
    /// One line per volume mount that is ignored (not an emptyDir), for the log.
    pub ignored: Vec<String>,
}

impl Mounts {
    /// Maps every emptyDir mount of `container` to its folder in `dir`, and the termination
    /// message path to `dir`'s termination-log. Other volume types are listed in `ignored`.
    pub fn for_container(dir: &PodDir, pod: &Pod, container: &Container) -> Self {
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        let mut mounts = Mounts { termination_log: dir.termination_log(), ..Default::default() };
        let mut entries = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let path = mount.mount_path.trim_end_matches('/');
            let volume = volumes.iter().find(|v| v.name == mount.name);
            match volume {
                Some(v) if v.empty_dir.is_some() && !path.is_empty() => {
                    let mut host = dir.volume(&v.name);
                    if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                        host = host.join(sub);
                    }
                    mounts.dirs.push(host.clone());
                    entries.push((path.to_string(), host));
                }
                Some(_) if path.is_empty() => {
                    mounts.ignored.push(format!("volume {:?}: a mount at / cannot be mapped", mount.name))
                }
                Some(_) => mounts.ignored.push(format!(
                    "volume {:?} at {}: only emptyDir volumes are provided on this test node",
                    mount.name, mount.mount_path
                )),
                None => mounts.ignored.push(format!(
                    "volume {:?} at {}: no such volume in the pod",
                    mount.name, mount.mount_path
                )),
            }
        }
        let termination =
            container.termination_message_path.as_deref().unwrap_or(DEFAULT_TERMINATION_MESSAGE_PATH);
        entries.push((termination.to_string(), mounts.termination_log.clone()));
        entries.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        mounts.paths = PathMap { entries };
        mounts
    }
}

impl PathMap {
    /// The host path standing in for `container_path`, if one of the mapped paths covers it.
    pub fn host_path(&self, container_path: &str) -> Option<PathBuf> {
        self.entries.iter().find_map(|(from, to)| {
            let rest = container_path.strip_prefix(from.as_str())?;
            match rest.strip_prefix('/') {
                Some(rest) => Some(to.join(rest)),
                None if rest.is_empty() => Some(to.clone()),
                None => None,
            }
        })
    }

    /// Rewrites the mapped paths in `value` where they start the value or follow an `=`
    /// (`--cache-dir=/var/cache/barge`), and only where the path ends the value or goes on with
    /// `/`, `,` or `:`: `/tmp` maps `/tmp`, `/tmp/x` and `/tmp:/x`, never `/tmpfs`.
    pub fn remap(&self, value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        loop {
            if let Some((host, len)) = self.replace_prefix(rest) {
                out.push_str(&host);
                rest = &rest[len..];
            }
            match rest.find('=') {
                Some(eq) => {
                    out.push_str(&rest[..=eq]);
                    rest = &rest[eq + 1..];
                }
                None => {
                    out.push_str(rest);
                    return out;
                }
            }
        }
    }

    /// The host path for the mapped path that starts `s`, and how many bytes of `s` it replaces.
    fn replace_prefix(&self, s: &str) -> Option<(String, usize)> {
        self.entries.iter().find_map(|(from, to)| {
            let rest = s.strip_prefix(from.as_str())?;
            let boundary = rest.chars().next().is_none_or(|c| matches!(c, '/' | ',' | ':'));
            boundary.then(|| (to.to_string_lossy().into_owned(), from.len()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_agent::fixtures::PodBuilder;

    fn mounts() -> (PodDir, Mounts) {
        let pod = PodBuilder::new("p")
            .empty_dir("cache", "/var/cache/barge")
            .empty_dir("tmp", "/tmp/")
            .config_map_volume("cfg", "/etc/cfg")
            .build();
        let dir = PodDir::new(Path::new("/state"), "ns", "p", "u1");
        let m = Mounts::for_container(&dir, &pod, &pod.spec.as_ref().expect("spec").containers[0]);
        (dir, m)
    }

    #[test]
    fn each_pod_gets_its_own_folder() {
        let dir = PodDir::new(Path::new("/state"), "ns", "p", "u1");
        assert_eq!(dir.root(), Path::new("/state/pods/ns_p_u1"));
        assert_eq!(dir.volume("cache"), Path::new("/state/pods/ns_p_u1/volumes/cache"));
    }

    #[test]
    fn empty_dir_mounts_and_the_termination_path_map_into_the_pod_folder() {
        let (_, m) = mounts();
        assert_eq!(m.paths.host_path("/var/cache/barge"), Some("/state/pods/ns_p_u1/volumes/cache".into()));
        assert_eq!(m.paths.host_path("/tmp/a/b"), Some("/state/pods/ns_p_u1/volumes/tmp/a/b".into()));
        assert_eq!(
            m.paths.host_path("/dev/termination-log"),
            Some("/state/pods/ns_p_u1/termination-log".into())
        );
        assert_eq!(m.paths.host_path("/tmpfs"), None);
        assert_eq!(m.dirs.len(), 2);
    }

    #[test]
    fn other_volume_types_are_ignored_with_a_reason() {
        let (_, m) = mounts();
        assert_eq!(m.ignored.len(), 1);
        assert!(m.ignored[0].contains("\"cfg\""), "{:?}", m.ignored);
        assert_eq!(m.paths.host_path("/etc/cfg"), None);
    }

    #[test]
    fn paths_are_rewritten_at_the_start_of_a_value_or_after_an_equals_sign() {
        let (_, m) = mounts();
        let p = &m.paths;
        assert_eq!(p.remap("/var/cache/barge"), "/state/pods/ns_p_u1/volumes/cache");
        assert_eq!(
            p.remap("--cache-dir=/var/cache/barge/models"),
            "--cache-dir=/state/pods/ns_p_u1/volumes/cache/models"
        );
        assert_eq!(
            p.remap("a=/tmp,b=/tmp"),
            "a=/state/pods/ns_p_u1/volumes/tmp,b=/state/pods/ns_p_u1/volumes/tmp"
        );
        assert_eq!(p.remap("/tmpfs"), "/tmpfs");
        assert_eq!(p.remap("see /tmp"), "see /tmp");
        assert_eq!(p.remap("s3://bucket/tmp"), "s3://bucket/tmp");
    }

    #[test]
    fn a_sub_path_maps_inside_its_volume() {
        let mut pod = PodBuilder::new("p").empty_dir("data", "/data").build();
        let c = &mut pod.spec.as_mut().expect("spec").containers[0];
        c.volume_mounts.as_mut().expect("mounts")[0].sub_path = Some("x".into());
        let dir = PodDir::new(Path::new("/s"), "ns", "p", "u");
        let m = Mounts::for_container(&dir, &pod, &pod.spec.as_ref().expect("spec").containers[0]);
        assert_eq!(m.paths.host_path("/data/f"), Some("/s/pods/ns_p_u/volumes/data/x/f".into()));
    }
}
