//! One live job per output. The runners refuse a second job on an output they already claimed,
//! but only once its pods run; the operator sees the clash at once and fails the newer job with
//! a reason naming the one that owns the output.

use barge_api::batchjob::BatchJob;
use kube::ResourceExt;

/// Where a job writes: the store's endpoint (None for AWS S3) and the output folder, without a
/// trailing slash.
fn output_of(job: &BatchJob) -> (Option<&str>, &str) {
    let endpoint =
        job.spec.storage.as_ref().and_then(|s| s.endpoint.as_deref()).map(|e| e.trim_end_matches('/'));
    (endpoint, job.spec.output.uri.trim_end_matches('/'))
}

/// Sorts jobs by who came first: creation time, then namespace and name.
fn seniority(job: &BatchJob) -> (Option<k8s_openapi::jiff::Timestamp>, String, String) {
    (job.creation_timestamp().map(|t| t.0), job.namespace().unwrap_or_default(), job.name_any())
}

/// The `namespace/name` of an unfinished job, other than `job` and created before it, that
/// writes to the same output; None when `job` may have it.
pub fn owner(job: &BatchJob, jobs: &[impl std::ops::Deref<Target = BatchJob>]) -> Option<String> {
    let mine = output_of(job);
    let me = seniority(job);
    jobs.iter()
        .map(|j| &**j)
        .filter(|j| j.uid() != job.uid() && j.metadata.deletion_timestamp.is_none())
        .filter(|j| !j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        .filter(|j| output_of(j) == mine && seniority(j) < me)
        .min_by_key(|j| seniority(j))
        .map(|j| format!("{}/{}", j.namespace().unwrap_or_default(), j.name_any()))
}

#[cfg(test)]
mod tests {
    use barge_api::batchjob::{BatchJobStatus, Phase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::fixtures::{JobBuilder, at};

    fn job(name: &str, output: &str, created: i64) -> BatchJob {
        let mut j = JobBuilder::new(name).build();
        j.spec.output.uri = output.into();
        j.metadata.uid = Some(format!("uid-{name}"));
        j.metadata.creation_timestamp = Some(Time(at(created)));
        j
    }

    #[test]
    fn the_older_unfinished_job_owns_an_output() {
        let first = job("first", "s3://b/out/", 0);
        let second = job("second", "s3://b/out", 5);
        let elsewhere = job("elsewhere", "s3://b/other/", 1);
        let jobs: Vec<Box<BatchJob>> =
            [&first, &second, &elsewhere].into_iter().cloned().map(Box::new).collect();
        assert_eq!(
            owner(&second, &jobs).as_deref(),
            Some("team-a/first"),
            "a trailing slash is the same folder"
        );
        assert_eq!(owner(&first, &jobs), None);
        assert_eq!(owner(&elsewhere, &jobs), None);

        let mut done = first.clone();
        done.status = Some(BatchJobStatus { phase: Phase::Succeeded, ..Default::default() });
        let jobs: Vec<Box<BatchJob>> = [done, second.clone()].into_iter().map(Box::new).collect();
        assert_eq!(owner(&second, &jobs), None, "a finished job's output may be reused");
    }
}
