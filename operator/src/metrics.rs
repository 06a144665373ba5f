//! Prometheus metrics at `GET /metrics`. Label sets are bounded: phases, error kinds and units,
//! never job names.

use std::time::Instant;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounter,
    pub errors: IntCounterVec,
    pub duration: Histogram,
    pub jobs: IntGaugeVec,
    pub requests: IntGaugeVec,
    pub tokens: IntGaugeVec,
    /// Cost in millionths of the currency unit, summed over the jobs the operator knows.
    pub cost_micros: IntGaugeVec,
    pub pods_created: IntCounter,
    pub pods_deleted: IntCounter,
    pub stale_views: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("barge_operator".into()), None).expect("static prefix is valid");
        let reconciles = IntCounter::new("reconciles_total", "Reconciliations run").expect("valid metric");
        let errors =
            IntCounterVec::new(Opts::new("reconcile_errors_total", "Failed reconciliations"), &["error"])
                .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new("reconcile_duration_seconds", "Time one reconciliation took")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("valid metric");
        let jobs =
            IntGaugeVec::new(Opts::new("jobs", "BatchJobs by phase"), &["phase"]).expect("valid metric");
        let requests =
            IntGaugeVec::new(Opts::new("requests", "Requests of all known jobs by outcome"), &["outcome"])
                .expect("valid metric");
        let tokens = IntGaugeVec::new(Opts::new("tokens", "Tokens of all known jobs by kind"), &["kind"])
            .expect("valid metric");
        let cost_micros = IntGaugeVec::new(
            Opts::new("cost_micros", "Estimated cost of all known jobs, in millionths of the currency"),
            &["currency"],
        )
        .expect("valid metric");
        let pods_created =
            IntCounter::new("pods_created_total", "Runner and finalize pods created").expect("valid metric");
        let pods_deleted =
            IntCounter::new("pods_deleted_total", "Pods deleted (stop, replace)").expect("valid metric");
        let stale_views = IntCounter::new(
            "stale_views_total",
            "Status writes refused because the job changed since the operator's view of it (replanned)",
        )
        .expect("valid metric");
        for m in [
            Box::new(stale_views.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconciles.clone()),
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(jobs.clone()),
            Box::new(requests.clone()),
            Box::new(tokens.clone()),
            Box::new(cost_micros.clone()),
            Box::new(pods_created.clone()),
            Box::new(pods_deleted.clone()),
        ] {
            registry.register(m).expect("each metric registered once");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            jobs,
            requests,
            tokens,
            cost_micros,
            pods_created,
            pods_deleted,
            stale_views,
        }
    }

    /// Counts a reconciliation and times it until the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer { metrics: self, start: Instant::now() }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.duration.observe(self.start.elapsed().as_secs_f64());
    }
}
