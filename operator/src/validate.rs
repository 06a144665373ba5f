//! Checks the schema cannot express. A failure names the field, so the job's `Failed`
//! condition tells the user exactly what to fix.

use std::time::Duration;

use barge_api::batchjob::BatchJobSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A spec error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

/// What the rest of the operator needs from a spec, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub completion_window: Duration,
    /// CPU cores each pod asks for (1 when unset): the unit of a CPU-only job's cost.
    pub cpu_cores: f64,
}

pub fn check(spec: &BatchJobSpec) -> Result<Checked, SpecError> {
    let completion_window = parse_duration(&spec.completion_window).ok_or_else(|| {
        err(
            "spec.completionWindow",
            format!("{:?} is not a duration like 24h or 1h30m", spec.completion_window),
        )
    })?;
    if completion_window < Duration::from_secs(1) {
        return Err(err("spec.completionWindow", "must be at least 1s"));
    }
    if spec.input.uri.ends_with('/') {
        return Err(err("spec.input.uri", format!("{} is a prefix; name one JSONL object", spec.input.uri)));
    }
    if spec.output.uri.ends_with(".jsonl") || spec.output.uri.ends_with(".json") {
        return Err(err(
            "spec.output.uri",
            format!("{} looks like a file; give a prefix such as s3://bucket/results/", spec.output.uri),
        ));
    }
    let out = spec.output.uri.trim_end_matches('/');
    if spec.input.uri.starts_with(&format!("{out}/_barge/")) {
        return Err(err("spec.output.uri", "the input must not lie inside the output's _barge/ folder"));
    }
    if let Some(storage) = &spec.storage
        && let Some(secret) = &storage.credentials_secret
        && !is_dns_subdomain(secret)
    {
        return Err(err("spec.storage.credentialsSecret", format!("{secret:?} is not a valid Secret name")));
    }
    let mut cpu_cores = 1.0;
    if let Some(res) = &spec.resources {
        if let Some(cpu) = &res.cpu {
            cpu_cores = parse_cpu(cpu).ok_or_else(|| {
                err("spec.resources.cpu", format!("{:?} is not a CPU quantity like 4 or 500m", cpu.0))
            })?;
            if cpu_cores <= 0.0 {
                return Err(err("spec.resources.cpu", "must be more than zero"));
            }
        }
        if let Some(mem) = &res.memory
            && !is_memory_quantity(&mem.0)
        {
            return Err(err(
                "spec.resources.memory",
                format!("{:?} is not a memory quantity like 16Gi", mem.0),
            ));
        }
        if res.gpus == 0 && res.gpu_type.is_some() {
            return Err(err("spec.resources.gpuType", "is set but spec.resources.gpus is 0"));
        }
    }
    if let Some(name) = &spec.priority_class_name
        && !is_dns_subdomain(name)
    {
        return Err(err("spec.priorityClassName", format!("{name:?} is not a valid PriorityClass name")));
    }
    Ok(Checked { completion_window, cpu_cores })
}

/// `24h`, `90m`, `1h30m`, `45s`: what `spec.completionWindow` accepts.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    if s.is_empty() {
        return None;
    }
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    digits.is_empty().then_some(Duration::from_secs(total))
}

/// CPU cores from a Kubernetes quantity: `2`, `0.5`, `500m`.
pub fn parse_cpu(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    let (num, scale) = match s.strip_suffix('m') {
        Some(n) => (n, 1e-3),
        None => (s, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * scale)
}

fn is_memory_quantity(s: &str) -> bool {
    let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && ["", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].contains(&suffix)
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;
    use barge_api::batchjob::{RunnerResources, StorageSpec};

    #[test]
    fn durations_parse_like_the_batch_apis_windows() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        for bad in ["", "24", "h", "1d", "1h30", "-1h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_good_spec_passes_with_its_parsed_values() {
        let checked = check(&spec()).expect("valid");
        assert_eq!(checked.completion_window, Duration::from_secs(86_400));
        assert_eq!(checked.cpu_cores, 1.0);
    }

    #[test]
    fn each_bad_field_is_named_in_the_error() {
        type BreakIt = Box<dyn Fn(&mut BatchJobSpec)>;
        let cases: Vec<(&str, BreakIt)> = vec![
            ("spec.completionWindow", Box::new(|s| s.completion_window = "0s".into())),
            ("spec.input.uri", Box::new(|s| s.input.uri = "s3://b/dir/".into())),
            ("spec.output.uri", Box::new(|s| s.output.uri = "s3://b/out/results.jsonl".into())),
            (
                "spec.storage.credentialsSecret",
                Box::new(|s| {
                    s.storage = Some(StorageSpec {
                        credentials_secret: Some("Bad_Name".into()),
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.resources.cpu",
                Box::new(|s| {
                    s.resources =
                        Some(RunnerResources { cpu: Some(Quantity("lots".into())), ..Default::default() })
                }),
            ),
            (
                "spec.resources.memory",
                Box::new(|s| {
                    s.resources =
                        Some(RunnerResources { memory: Some(Quantity("16GB".into())), ..Default::default() })
                }),
            ),
            (
                "spec.resources.gpuType",
                Box::new(|s| {
                    s.resources =
                        Some(RunnerResources { gpu_type: Some("nvidia-h100".into()), ..Default::default() })
                }),
            ),
        ];
        for (field, break_it) in cases {
            let mut s = spec();
            break_it(&mut s);
            let e = check(&s).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn cpu_quantities_become_cores() {
        assert_eq!(parse_cpu(&Quantity("500m".into())), Some(0.5));
        assert_eq!(parse_cpu(&Quantity("4".into())), Some(4.0));
        assert_eq!(parse_cpu(&Quantity("x".into())), None);
    }
}
