//! The node agent against the testbed's real kube-apiserver, kube-scheduler and
//! kube-controller-manager. Each test starts its own agent (its own Node, pod IP range and state
//! folder), so the tests run side by side and beside the testbed's own node.
//!
//! Needs `BARGE_E2E_KUBECONFIG`; see `barge_e2e::testkit::HOW_TO_RUN` and tests/README.md.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use barge_e2e::node_agent::node::{GPU_PRODUCT_LABEL, GPU_RESOURCE, LEASE_NAMESPACE, LIFECYCLE_TAINTS};
use barge_e2e::testkit::{self, TestNamespace, wait_for};
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Container, ContainerStateTerminated, ContainerStateWaiting, EnvVar, EnvVarSource, Node,
    ObjectFieldSelector, Pod, PodSpec, ResourceRequirements, Secret, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const AGENT: &str = env!("CARGO_BIN_EXE_barge-node-agent");
/// The test image: any image whose last path component is `shell` runs /bin/sh.
const SHELL_IMAGE: &str = "ghcr.io/barge-dev/e2e/shell:1";
const GPUS: u32 = 8;
const GPU_PRODUCT: &str = "NVIDIA-H100-80GB-HBM3";

#[tokio::test]
async fn the_node_registers_ready_with_its_gpus_and_keeps_its_lease_fresh() {
    scenario("e2e-node", "127.61", async |s| {
        let nodes: Api<Node> = Api::all(s.client.clone());
        let node = nodes.get(&s.agent.node).await.expect("the node exists");
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(GPU_PRODUCT_LABEL).map(String::as_str), Some(GPU_PRODUCT));
        assert_eq!(labels.get("kubernetes.io/hostname"), Some(&s.agent.node));
        let status = node.status.clone().expect("node status");
        let allocatable = status.allocatable.unwrap_or_default();
        assert_eq!(allocatable.get(GPU_RESOURCE), Some(&Quantity(GPUS.to_string())));
        assert_eq!(status.node_info.expect("node info").kubelet_version, "v1.36.3");
        // The node lifecycle controller may taint a brand-new node before it sees Ready; the
        // taints must go and stay gone.
        wait_for("no not-ready/unreachable taints", Duration::from_secs(30), || async {
            let node = nodes.get(&s.agent.node).await.map_err(|e| e.to_string())?;
            let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
            if taints.iter().any(|t| LIFECYCLE_TAINTS.contains(&t.key.as_str())) {
                Err(format!("{taints:?}"))
            } else {
                Ok(())
            }
        })
        .await;

        let leases: Api<Lease> = Api::namespaced(s.client.clone(), LEASE_NAMESPACE);
        let renewed = |lease: Lease| lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
        let first = renewed(leases.get(&s.agent.node).await.expect("the lease exists")).expect("renew time");
        wait_for("the lease to be renewed", Duration::from_secs(15), || async {
            let lease = leases.get(&s.agent.node).await.map_err(|e| e.to_string())?;
            let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
            match renewed(lease) {
                Some(t) if t > first && holder.as_ref() == Some(&s.agent.node) => Ok(()),
                other => Err(format!("renewTime {other:?}, holder {holder:?}")),
            }
        })
        .await;
        assert!(node_ready(&nodes.get(&s.agent.node).await.expect("node")), "the node stays Ready");
    })
    .await;
}

#[tokio::test]
async fn a_pod_runs_as_a_process_and_reports_its_exit_like_a_kubelet() {
    scenario("e2e-exit", "127.62", async |s| {
        let pods = s.ns.pods();
        // The termination message path is an argument, so it reaches the script rewritten to
        // the pod's own file; the pod IP comes from the downward API.
        let ok = TestPod::new("ok", &s.agent.node)
            .script(r#"echo "starting on $POD_IP"; printf '%s' "$POD_IP" > "$1""#, &["/dev/termination-log"])
            .field_env("POD_IP", "status.podIP")
            .build();
        let failing = TestPod::new("fails", &s.agent.node).script("echo hi; exit 3", &[]).build();
        pods.create(&PostParams::default(), &ok).await.expect("create ok");
        pods.create(&PostParams::default(), &failing).await.expect("create fails");

        let ok = wait_phase(&pods, "ok", "Succeeded").await;
        let term = terminated(&ok).expect("terminated state");
        assert_eq!((term.exit_code, term.reason.as_deref()), (0, Some("Completed")));
        let status = ok.status.clone().expect("status");
        let pod_ip = status.pod_ip.clone().expect("pod IP");
        assert!(pod_ip.starts_with("127.62."), "{pod_ip}");
        assert_eq!(term.message.as_deref(), Some(pod_ip.as_str()), "the termination message is the pod's IP");
        assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
        let id = ok.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|c| c[0].clone());
        assert!(id.and_then(|c| c.container_id).is_some_and(|id| id.starts_with("barge://")));
        assert!(s.agent.container_log(&ok).contains(&format!("starting on {pod_ip}")));

        let failed = wait_phase(&pods, "fails", "Failed").await;
        let term = terminated(&failed).expect("terminated state");
        assert_eq!((term.exit_code, term.reason.as_deref()), (3, Some("Error")));
        assert_eq!(term.message.as_deref(), Some("hi\n"), "FallbackToLogsOnError: the log's tail");
        let failed_ip = failed.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
        assert_ne!(failed_ip, pod_ip, "each pod has its own IP");
        let ready = failed.status.as_ref().map(pod_conditions).unwrap_or_default();
        assert_eq!(ready.get("Ready").map(String::as_str), Some("False"));
        assert_eq!(
            ready.get("PodScheduled").map(String::as_str),
            Some("True"),
            "the scheduler's condition stays"
        );
    })
    .await;
}

#[tokio::test]
async fn a_pod_waits_for_its_missing_secret_and_runs_once_it_exists() {
    scenario("e2e-secret", "127.63", async |s| {
        let pods = s.ns.pods();
        let pod = TestPod::new("needs-secret", &s.agent.node)
            .script(r#"printf '%s' "$TOKEN" > "$1""#, &["/dev/termination-log"])
            .secret_env("TOKEN", "creds", "token")
            .build();
        pods.create(&PostParams::default(), &pod).await.expect("create pod");

        let waiting = wait_waiting(&pods, "needs-secret", "CreateContainerConfigError").await;
        assert_eq!(waiting.message.as_deref(), Some(r#"secret "creds" not found"#));
        let pending = pods.get("needs-secret").await.expect("pod");
        assert_eq!(pending.status.and_then(|s| s.phase).as_deref(), Some("Pending"));

        let secrets: Api<Secret> = s.ns.api();
        let secret = Secret {
            metadata: ObjectMeta { name: Some("creds".into()), ..Default::default() },
            string_data: Some(BTreeMap::from([("other".to_string(), "x".to_string())])),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await.expect("create secret");
        let waiting = wait_waiting_message(&pods, "needs-secret", "couldn't find key token in Secret").await;
        assert_eq!(waiting.message, Some(format!("couldn't find key token in Secret {}/creds", s.ns.name)));

        let mut secret = secrets.get("creds").await.expect("secret");
        secret.string_data = Some(BTreeMap::from([("token".to_string(), "s3cr3t".to_string())]));
        secrets.replace("creds", &PostParams::default(), &secret).await.expect("update secret");
        let done = wait_phase(&pods, "needs-secret", "Succeeded").await;
        assert_eq!(terminated(&done).and_then(|t| t.message).as_deref(), Some("s3cr3t"));
    })
    .await;
}

#[tokio::test]
async fn deleting_a_running_pod_sends_it_sigterm_and_removes_it() {
    scenario("e2e-delete", "127.64", async |s| {
        let pods = s.ns.pods();
        let script = r#"trap 'echo got TERM; exit 0' TERM; echo started; sleep 1000 & wait"#;
        let pod = TestPod::new("sleeper", &s.agent.node).script(script, &[]).build();
        pods.create(&PostParams::default(), &pod).await.expect("create pod");
        let running = wait_phase(&pods, "sleeper", "Running").await;
        let dir = s.agent.pod_dir(&running);
        wait_for("the script to start", Duration::from_secs(10), || async {
            let log = s.agent.container_log(&running);
            if log.contains("started") { Ok(()) } else { Err(log) }
        })
        .await;
        assert!(!processes_in(&dir).is_empty(), "the pod's processes run in its folder");

        pods.delete("sleeper", &DeleteParams::default()).await.expect("delete pod");
        wait_for("the pod to be removed", Duration::from_secs(20), || async {
            match pods.get_opt("sleeper").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|p| p.and_then(|p| p.status)))),
            }
        })
        .await;
        assert!(s.agent.container_log(&running).contains("got TERM"), "the pod got SIGTERM");
        assert_eq!(processes_in(&dir), Vec::<u32>::new(), "nothing of the pod is left running");
    })
    .await;
}

#[tokio::test]
async fn an_image_the_node_cannot_run_is_reported_as_an_image_pull_error() {
    scenario("e2e-image", "127.65", async |s| {
        let pods = s.ns.pods();
        let pod = TestPod::new("unknown", &s.agent.node).image("example.com/not-here:1").build();
        pods.create(&PostParams::default(), &pod).await.expect("create pod");
        let waiting = wait_waiting(&pods, "unknown", "ErrImagePull").await;
        let message = r#"image "example.com/not-here:1" is not available on this test node"#;
        assert_eq!(waiting.message.as_deref(), Some(message));
        let backoff = wait_waiting(&pods, "unknown", "ImagePullBackOff").await;
        assert!(backoff.message.is_some_and(|m| m.contains(message)));
        // A pod that never started is removed at once on deletion.
        pods.delete("unknown", &DeleteParams::default()).await.expect("delete pod");
        wait_for("the pod to be removed", Duration::from_secs(15), || async {
            match pods.get_opt("unknown").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|p| p.map(|p| p.metadata.deletion_timestamp)))),
            }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_pod_asking_more_gpus_than_the_node_has_stays_unscheduled() {
    scenario("e2e-gpus", "127.66", async |s| {
        let pods = s.ns.pods();
        let pod = TestPod::new("greedy", &s.agent.node).script("exit 0", &[]).gpus(GPUS + 1).build();
        pods.create(&PostParams::default(), &pod).await.expect("create pod");
        let fits = TestPod::new("fits", &s.agent.node).script("exit 0", &[]).gpus(GPUS).build();
        pods.create(&PostParams::default(), &fits).await.expect("create pod");
        wait_phase(&pods, "fits", "Succeeded").await;

        let greedy = wait_for("the scheduler to refuse the pod", Duration::from_secs(30), || async {
            let pod = pods.get("greedy").await.map_err(|e| e.to_string())?;
            let scheduled = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| {
                c.iter().find(|c| c.type_ == "PodScheduled").map(|c| (c.status.clone(), c.reason.clone()))
            });
            match scheduled {
                Some((status, Some(reason))) if status == "False" && reason == "Unschedulable" => Ok(pod),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(greedy.spec.and_then(|s| s.node_name), None);
        assert_eq!(greedy.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    })
    .await;
}

#[tokio::test]
async fn a_stopped_agent_leaves_no_process_and_its_successor_fails_the_lost_pods() {
    scenario("e2e-restart", "127.67", async |s| {
        let pods = s.ns.pods();
        let pod = TestPod::new("long", &s.agent.node).script("echo started; sleep 1000", &[]).build();
        pods.create(&PostParams::default(), &pod).await.expect("create pod");
        let running = wait_phase(&pods, "long", "Running").await;
        let dir = s.agent.pod_dir(&running);
        wait_for("the pod's process", Duration::from_secs(10), || async {
            let pids = processes_in(&dir);
            if pids.is_empty() { Err("none") } else { Ok(pids) }
        })
        .await;

        let exit = s.agent.stop().await;
        assert!(exit.success(), "the agent exits cleanly on SIGTERM: {exit:?}");
        assert_eq!(processes_in(&dir), Vec::<u32>::new(), "the agent killed its pods' processes");

        s.agent.start(&s.client).await;
        let lost = wait_phase(&pods, "long", "Failed").await;
        let status = lost.status.clone().expect("status");
        assert_eq!(status.reason.as_deref(), Some("NodeAgentRestarted"));
        assert_eq!(terminated(&lost).map(|t| t.exit_code), Some(137));
        assert_eq!(status.pod_ip, running.status.and_then(|s| s.pod_ip), "the lost pod keeps its IP");
        pods.delete("long", &DeleteParams::default()).await.expect("delete pod");
        wait_for("the lost pod to be removed", Duration::from_secs(15), || async {
            match pods.get_opt("long").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|p| p.map(|p| p.status)))),
            }
        })
        .await;
    })
    .await;
}

// --- fixtures -------------------------------------------------------------------------------------

/// One test's world: a client, a namespace, and a node agent of its own.
struct Setup {
    client: Client,
    ns: TestNamespace,
    agent: Agent,
}

/// Runs `body` with a fresh namespace and node agent; on failure prints the namespace's pods
/// and events, the pods' logs and the agent's log before failing. Cleans up either way (unless
/// `BARGE_E2E_KEEP`).
async fn scenario(name: &str, ip_base: &str, body: impl AsyncFnOnce(&mut Setup)) {
    let client = testkit::client().await;
    let ns = TestNamespace::create(&client, name).await;
    let mut agent = Agent::new(name, ip_base);
    agent.start(&client).await;
    let mut setup = Setup { client, ns, agent };
    let outcome = AssertUnwindSafe(body(&mut setup)).catch_unwind().await;
    if outcome.is_err() {
        eprintln!("{}", setup.ns.dump().await);
        eprintln!("{}", setup.agent.logs());
    }
    setup.agent.remove(&setup.client).await;
    setup.ns.delete().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A `barge-node-agent` process and its Node.
struct Agent {
    node: String,
    ip_base: String,
    state_dir: PathBuf,
    process: Option<tokio::process::Child>,
}

impl Agent {
    fn new(test: &str, ip_base: &str) -> Self {
        let node = testkit::unique_name(test);
        let state_dir = std::env::temp_dir().join("barge-e2e").join(&node);
        Self { node, ip_base: ip_base.into(), state_dir, process: None }
    }

    fn log_path(&self) -> PathBuf {
        self.state_dir.join("agent.log")
    }

    /// Starts the agent and waits until its Node is Ready.
    async fn start(&mut self, client: &Client) {
        std::fs::create_dir_all(&self.state_dir).expect("create the agent's state dir");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("agent log");
        let kubeconfig = testkit::kubeconfig();
        let child = tokio::process::Command::new(AGENT)
            .args(["--kubeconfig", &kubeconfig.to_string_lossy(), "--node-name", &self.node])
            .args(["--state-dir", &self.state_dir.to_string_lossy(), "--pod-ip-base", &self.ip_base])
            .args(["--image", "shell=/bin/sh", "--gpus", &GPUS.to_string(), "--gpu-product", GPU_PRODUCT])
            .args(["--labels", "barge.dev/e2e=true"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start barge-node-agent");
        self.process = Some(child);
        let nodes: Api<Node> = Api::all(client.clone());
        let name = self.node.clone();
        wait_for(&format!("node {name} to be Ready"), Duration::from_secs(30), || async {
            match nodes.get_opt(&name).await {
                Ok(Some(node)) if node_ready(&node) => Ok(()),
                other => {
                    Err(format!("{:?}", other.map(|n| n.and_then(|n| n.status).and_then(|s| s.conditions))))
                }
            }
        })
        .await;
    }

    /// SIGTERM, then waits (at most 20 s) for the agent to exit.
    async fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.process.take().expect("the agent runs");
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).expect("the agent has a pid");
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("signal the agent");
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(status) => status.expect("wait for the agent"),
            Err(_) => panic!("the agent did not exit within 20 s of SIGTERM\n{}", self.logs()),
        }
    }

    /// Stops the agent (if it runs), deletes its Node and, unless kept, its state.
    async fn remove(&mut self, client: &Client) {
        if self.process.is_some() {
            self.stop().await;
        }
        if testkit::keep() {
            eprintln!("keeping node {} and {}", self.node, self.state_dir.display());
            return;
        }
        let nodes: Api<Node> = Api::all(client.clone());
        if let Err(e) = nodes.delete(&self.node, &DeleteParams::default()).await {
            eprintln!("cannot delete node {}: {e}", self.node);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }

    fn pod_dir(&self, pod: &Pod) -> PathBuf {
        let m = &pod.metadata;
        let (ns, name, uid) = (m.namespace.as_deref(), m.name.as_deref(), m.uid.as_deref());
        let dir =
            format!("{}_{}_{}", ns.unwrap_or_default(), name.unwrap_or_default(), uid.unwrap_or_default());
        self.state_dir.join("pods").join(dir)
    }

    fn container_log(&self, pod: &Pod) -> String {
        std::fs::read_to_string(self.pod_dir(pod).join("container.log")).unwrap_or_default()
    }

    /// The agent's log and every pod's container log.
    fn logs(&self) -> String {
        let mut out = format!("--- node agent {} log ---\n", self.node);
        out.push_str(&std::fs::read_to_string(self.log_path()).unwrap_or_default());
        let pods = std::fs::read_dir(self.state_dir.join("pods")).into_iter().flatten().flatten();
        for dir in pods {
            let log = std::fs::read_to_string(dir.path().join("container.log")).unwrap_or_default();
            out.push_str(&format!("--- {} container.log ---\n{log}", dir.file_name().to_string_lossy()));
        }
        out
    }
}

/// A pod for the test node: one container running `sh -c SCRIPT sh ARGS…`, restartPolicy Never.
struct TestPod {
    pod: Pod,
}

impl TestPod {
    fn new(name: &str, node: &str) -> Self {
        let container = Container {
            name: "main".into(),
            image: Some(SHELL_IMAGE.into()),
            command: Some(vec!["sh".into(), "-c".into(), "exit 0".into()]),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        };
        let pod = Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PodSpec {
                containers: vec![container],
                restart_policy: Some("Never".into()),
                automount_service_account_token: Some(false),
                node_selector: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".to_string(),
                    node.to_string(),
                )])),
                termination_grace_period_seconds: Some(30),
                ..Default::default()
            }),
            status: None,
        };
        Self { pod }
    }

    fn container(&mut self) -> &mut Container {
        &mut self.pod.spec.as_mut().expect("a test pod has a spec").containers[0]
    }

    fn script(mut self, script: &str, args: &[&str]) -> Self {
        let mut command = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
        command.extend(args.iter().map(|a| a.to_string()));
        self.container().command = Some(command);
        self
    }

    fn image(mut self, image: &str) -> Self {
        self.container().image = Some(image.into());
        self
    }

    fn env_source(mut self, name: &str, source: EnvVarSource) -> Self {
        let var = EnvVar { name: name.into(), value_from: Some(source), ..Default::default() };
        self.container().env.get_or_insert_with(Vec::new).push(var);
        self
    }

    fn field_env(self, name: &str, path: &str) -> Self {
        let field_ref = ObjectFieldSelector { field_path: path.into(), ..Default::default() };
        self.env_source(name, EnvVarSource { field_ref: Some(field_ref), ..Default::default() })
    }

    fn secret_env(self, name: &str, secret: &str, key: &str) -> Self {
        let sel = SecretKeySelector { name: secret.into(), key: key.into(), optional: None };
        self.env_source(name, EnvVarSource { secret_key_ref: Some(sel), ..Default::default() })
    }

    fn gpus(mut self, n: u32) -> Self {
        let gpus = BTreeMap::from([(GPU_RESOURCE.to_string(), Quantity(n.to_string()))]);
        self.container().resources = Some(ResourceRequirements {
            limits: Some(gpus.clone()),
            requests: Some(gpus),
            ..Default::default()
        });
        self
    }

    fn build(self) -> Pod {
        self.pod
    }
}

// --- reading pods -------------------------------------------------------------------------------

fn node_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

fn pod_conditions(status: &k8s_openapi::api::core::v1::PodStatus) -> BTreeMap<String, String> {
    status.conditions.iter().flatten().map(|c| (c.type_.clone(), c.status.clone())).collect()
}

fn container_state(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()?.state.clone()
}

fn terminated(pod: &Pod) -> Option<ContainerStateTerminated> {
    container_state(pod)?.terminated
}

async fn wait_pod<T>(pods: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Pod) -> Option<T>) -> T {
    let what = format!("pod {name}: {what}");
    wait_for(&what, Duration::from_secs(30), || {
        let pods = pods.clone();
        let check = &check;
        async move {
            let pod = pods.get(name).await.map_err(|e| e.to_string())?;
            check(&pod).ok_or_else(|| serde_json::to_string_pretty(&pod.status).unwrap_or_default())
        }
    })
    .await
}

async fn wait_phase(pods: &Api<Pod>, name: &str, phase: &str) -> Pod {
    wait_pod(pods, name, &format!("phase {phase}"), |pod| {
        let current = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        (current == Some(phase)).then(|| pod.clone())
    })
    .await
}

async fn wait_waiting(pods: &Api<Pod>, name: &str, reason: &str) -> ContainerStateWaiting {
    wait_pod(pods, name, &format!("waiting reason {reason}"), |pod| {
        container_state(pod)?.waiting.filter(|w| w.reason.as_deref() == Some(reason))
    })
    .await
}

async fn wait_waiting_message(pods: &Api<Pod>, name: &str, part: &str) -> ContainerStateWaiting {
    wait_pod(pods, name, &format!("a waiting message with {part:?}"), |pod| {
        container_state(pod)?.waiting.filter(|w| w.message.as_deref().is_some_and(|m| m.contains(part)))
    })
    .await
}

/// Pids of the processes whose working directory is `dir` (a pod's processes run in its folder).
fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|pid: &u32| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect();
    pids.sort_unstable();
    pids
}
