//! Bad specs, as a user writes them: each one is refused by the API server (the CRD's schema) or
//! failed by the operator with reason `InvalidSpec`, and either way the answer names the field
//! that is wrong. `docs/reliability.md` lists them; the runtime cases (a missing Secret or
//! PriorityClass, an unpullable image, a busy output) have stories of their own in `jobs.rs`.

use std::time::Duration;

use barge_api::batchjob::{condition, reason};
use serde_json::{Value, json};

use crate::harness::*;

/// Where a bad spec is caught.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Caught {
    /// `kubectl apply` fails: the CRD's schema refuses it.
    ByTheApiServer,
    /// The job is created and fails with `InvalidSpec`.
    ByTheOperator,
}

struct Case {
    what: &'static str,
    /// JSON pointer under the spec, and the value set there (`Null` removes it).
    at: &'static str,
    value: Value,
    /// What the answer must name.
    names: &'static str,
    caught: Caught,
}

fn cases() -> Vec<Case> {
    use Caught::*;
    let case = |what, at, value, names, caught| Case { what, at, value, names, caught };
    vec![
        case(
            "a model URI that is not S3",
            "/model/uri",
            json!("http://example.org/model"),
            "spec.model.uri",
            ByTheApiServer,
        ),
        case("no shards", "/parallelism", json!(0), "spec.parallelism", ByTheApiServer),
        case("a backoff limit over 100", "/backoffLimit", json!(101), "spec.backoffLimit", ByTheApiServer),
        case(
            "a window that is not a duration",
            "/completionWindow",
            json!("tomorrow"),
            "spec.completionWindow",
            ByTheApiServer,
        ),
        case("no input URI", "/input/uri", Value::Null, "spec.input.uri", ByTheApiServer),
        case("a misspelt field", "/paralelism", json!(2), "paralelism", ByTheApiServer),
        case(
            "a temperature over 2",
            "/defaults",
            json!({"temperature": 3.0}),
            "spec.defaults.temperature",
            ByTheApiServer,
        ),
        case("a window of zero", "/completionWindow", json!("0s"), "spec.completionWindow", ByTheOperator),
        case(
            "an input that is a prefix",
            "/input/uri",
            json!("s3://bucket/inputs/"),
            "spec.input.uri",
            ByTheOperator,
        ),
        case(
            "an output that is a file",
            "/output/uri",
            json!("s3://bucket/out/results.jsonl"),
            "spec.output.uri",
            ByTheOperator,
        ),
        case(
            "an input inside the output's work folder",
            "/input/uri",
            json!("s3://bucket/out/_barge/in.jsonl"),
            "spec.output.uri",
            ByTheOperator,
        ),
        case(
            "a memory size in the wrong units",
            "/resources",
            json!({"memory": "16GB"}),
            "spec.resources.memory",
            ByTheOperator,
        ),
        case(
            "a CPU count that is not a number",
            "/resources",
            json!({"cpu": "lots"}),
            "spec.resources.cpu",
            ByTheOperator,
        ),
        case(
            "a GPU type without GPUs",
            "/resources",
            json!({"gpuType": "nvidia-h100"}),
            "spec.resources.gpuType",
            ByTheOperator,
        ),
        case(
            "a Secret name Kubernetes cannot hold",
            "/storage/credentialsSecret",
            json!("Bad_Name"),
            "spec.storage.credentialsSecret",
            ByTheOperator,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_bad_spec_is_refused_naming_its_field() {
    let mut story = Story::new("bad-specs").await;
    story.install_operator(&[]).await;
    let good = serde_json::to_value(story.spec("in.jsonl", "out")).expect("spec as JSON");
    let good = {
        // One bucket for every case, so the output and input cases read as a user writes them.
        let mut g = good;
        g["input"]["uri"] = json!("s3://bucket/in.jsonl");
        g["output"]["uri"] = json!("s3://bucket/out/");
        g
    };
    let mut created = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let mut spec = good.clone();
        let (parent, key) = case.at.rsplit_once('/').expect("a pointer");
        let holder = if parent.is_empty() {
            &mut spec
        } else {
            spec.pointer_mut(parent).unwrap_or_else(|| panic!("{} is in the spec", parent))
        };
        let obj = holder.as_object_mut().expect("an object");
        if case.value.is_null() {
            obj.remove(key);
        } else {
            obj.insert(key.to_string(), case.value.clone());
        }
        let name = format!("bad-{i}");
        let doc = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
                         "metadata": {"name": name}, "spec": spec});
        let path = story.scratch.path().join(format!("{name}.json"));
        std::fs::write(&path, doc.to_string()).expect("write");
        let out = kubectl(&["apply", "-n", &story.ns, "-f", &path.display().to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        match case.caught {
            Caught::ByTheApiServer => {
                assert!(!out.status.success(), "{}: the API server took it", case.what);
                assert!(
                    err.contains(case.names),
                    "{}: the refusal does not name {}: {err}",
                    case.what,
                    case.names
                );
            }
            Caught::ByTheOperator => {
                assert!(out.status.success(), "{}: the API server refused it: {err}", case.what);
                created.push((name, case));
            }
        }
    }
    for (name, case) in created {
        let job = story.wait_phase(&name, "Failed", Duration::from_secs(60)).await;
        let (_, why, message) = condition_status(&job, condition::FAILED).expect("a Failed condition");
        assert_eq!(why, reason::INVALID_SPEC, "{}", case.what);
        assert!(message.starts_with(case.names), "{}: {message}", case.what);
    }
    // Nothing ran for any of them.
    assert!(story.pods().list(&Default::default()).await.expect("pods").items.is_empty());
}
