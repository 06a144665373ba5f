//! What process stands in for a container: program, arguments, environment and folder.
//!
//! The image's binary comes from `--image`. A container's `command` replaces an image's
//! entrypoint; this node has no image to read an entrypoint from, so it reads `command[0]` as
//! follows: when its file name equals the binary's (`sh` for `/bin/sh`, `barge-runner` for
//! `…/release/barge-runner`) it names the image's own entrypoint, and the mapped binary runs
//! with `command[1..]`; otherwise `command[0]` is run as given (found on `PATH`), as a container
//! running another program of its image would. `args` follow, as in Kubernetes.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use super::env::Env;
use super::pod_dir::{Mounts, PodDir};

/// The variable through which a Barge runner learns where its termination message goes
/// (`/dev/termination-log` does not exist for a process on this node).
pub const TERMINATION_PATH_VAR: &str = "BARGE_TERMINATION_MESSAGE_PATH";

/// A process ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment: nothing else of the agent's reaches the process.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// Everything a launch is made from.
#[derive(Debug, Clone, Copy)]
pub struct LaunchInput<'a> {
    pub container: &'a Container,
    pub binary: &'a Path,
    /// The container's resolved env, in container paths.
    pub env: &'a Env,
    pub mounts: &'a Mounts,
    pub dir: &'a PodDir,
    pub pod_name: &'a str,
    /// Variables of the agent's own environment that pods inherit (`PATH`, `HOME`, …).
    pub inherited: &'a [(String, String)],
}

/// Program and arguments, `$(VAR)`-expanded, before paths are mapped to the host.
pub fn argv(container: &Container, binary: &Path, env: &Env) -> (PathBuf, Vec<String>) {
    let command = container.command.as_deref().unwrap_or_default();
    let args = container.args.as_deref().unwrap_or_default();
    let names_binary = |first: &str| {
        let name = Path::new(first).file_name();
        name.is_some() && name == binary.file_name()
    };
    let (program, rest) = match command.split_first() {
        Some((first, rest)) if names_binary(first) => (binary.to_path_buf(), rest),
        Some((first, rest)) => (PathBuf::from(env.expand(first)), rest),
        None => (binary.to_path_buf(), &[][..]),
    };
    (program, rest.iter().chain(args).map(|a| env.expand(a)).collect())
}

/// The process for `input.container`, with every mapped container path rewritten to its host
/// path in the program, arguments and env values.
pub fn launch(input: LaunchInput<'_>) -> Launch {
    let paths = &input.mounts.paths;
    let (program, args) = argv(input.container, input.binary, input.env);
    let program = PathBuf::from(paths.remap(&program.to_string_lossy()));
    let args = args.iter().map(|a| paths.remap(a)).collect();

    let mut env = Env::default();
    for (k, v) in input.inherited {
        env.set(k, v.clone());
    }
    env.set("HOSTNAME", input.pod_name.to_string());
    env.set(TERMINATION_PATH_VAR, input.mounts.termination_log.to_string_lossy().into_owned());
    if let Some(tmp) = paths.host_path("/tmp") {
        env.set("TMPDIR", tmp.to_string_lossy().into_owned());
    }
    for (k, v) in input.env.iter() {
        env.set(k, paths.remap(v));
    }
    Launch {
        program,
        args,
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        cwd: input.dir.root().to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_agent::env::{PodFacts, Sources, resolve};
    use crate::node_agent::fixtures::PodBuilder;
    use k8s_openapi::api::core::v1::Pod;

    fn launch_of(pod: &Pod, binary: &str) -> Launch {
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let facts = PodFacts { pod, pod_ip: "127.1.0.2", host_ip: "127.0.0.1" };
        let env = resolve(container, facts, &Sources::default()).expect("env resolves");
        let dir = PodDir::new(Path::new("/s"), "ns", "p", "u");
        let mounts = Mounts::for_container(&dir, pod, container);
        let inherited = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
        launch(LaunchInput {
            container,
            binary: Path::new(binary),
            env: &env,
            mounts: &mounts,
            dir: &dir,
            pod_name: "p",
            inherited: &inherited,
        })
    }

    #[test]
    fn without_a_command_the_image_binary_runs_with_the_args() {
        let pod = PodBuilder::new("p")
            .field_env("POD_IP", "status.podIP")
            .args(&["run", "--listen", "$(POD_IP):9090"])
            .build();
        let l = launch_of(&pod, "/opt/barge-runner");
        assert_eq!(l.program, Path::new("/opt/barge-runner"));
        assert_eq!(l.args, ["run", "--listen", "127.1.0.2:9090"]);
        assert_eq!(l.cwd, Path::new("/s/pods/ns_p_u"));
    }

    #[test]
    fn a_command_naming_the_image_binary_runs_the_mapped_binary() {
        let pod = PodBuilder::new("p").command(&["sh", "-c"]).args(&["echo hi; exit 3"]).build();
        let l = launch_of(&pod, "/bin/sh");
        assert_eq!(l.program, Path::new("/bin/sh"));
        assert_eq!(l.args, ["-c", "echo hi; exit 3"]);
        let pod = PodBuilder::new("p").command(&["/usr/local/bin/sh", "-c", "true"]).build();
        assert_eq!(launch_of(&pod, "/bin/sh").program, Path::new("/bin/sh"));
    }

    #[test]
    fn a_command_naming_another_program_runs_that_program() {
        let pod = PodBuilder::new("p").command(&["sleep", "1000"]).build();
        let l = launch_of(&pod, "/bin/busybox");
        assert_eq!((l.program, l.args), (PathBuf::from("sleep"), vec!["1000".to_string()]));
    }

    #[test]
    fn container_paths_in_args_and_env_become_pod_folder_paths() {
        let pod = PodBuilder::new("p")
            .empty_dir("cache", "/var/cache/barge")
            .env("CACHE", "/var/cache/barge")
            .args(&["--cache-dir", "$(CACHE)/models", "--out=/dev/termination-log"])
            .build();
        let l = launch_of(&pod, "/bin/runner");
        assert_eq!(
            l.args,
            ["--cache-dir", "/s/pods/ns_p_u/volumes/cache/models", "--out=/s/pods/ns_p_u/termination-log"]
        );
        let env: std::collections::BTreeMap<_, _> = l.env.into_iter().collect();
        assert_eq!(env["CACHE"], "/s/pods/ns_p_u/volumes/cache");
    }

    #[test]
    fn the_process_gets_the_pod_env_over_a_small_inherited_base() {
        let pod = PodBuilder::new("p").empty_dir("tmp", "/tmp").env("PATH", "/pod/bin").env("X", "1").build();
        let env: std::collections::BTreeMap<_, _> = launch_of(&pod, "/bin/runner").env.into_iter().collect();
        assert_eq!(env["PATH"], "/pod/bin");
        assert_eq!(env["HOSTNAME"], "p");
        assert_eq!(env["TMPDIR"], "/s/pods/ns_p_u/volumes/tmp");
        assert_eq!(env[TERMINATION_PATH_VAR], "/s/pods/ns_p_u/termination-log");
        assert_eq!(env.len(), 5, "{env:?}");
    }
}
