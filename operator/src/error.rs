//! The controller's errors: transient ones are retried with backoff; a job's own problems never
//! come here (they become a Failed status instead).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the status of {job}")]
    PatchStatus {
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot create pod {pod}")]
    CreatePod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete pod {pod}")]
    DeletePod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete BatchJob {job}")]
    DeleteJob {
        job: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A bounded label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::PatchStatus { .. } => "patch_status",
            Error::CreatePod { .. } => "create_pod",
            Error::DeletePod { .. } => "delete_pod",
            Error::DeleteJob { .. } => "delete_job",
        }
    }
}
