//! Prometheus metrics of one runner process, served at `GET /metrics`.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Requests by outcome (`completed` or `failed`).
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounter,
    /// Tokens generated (decoder models).
    pub completion_tokens: IntCounter,
    pub batch_size: Histogram,
    pub batch_seconds: Histogram,
    pub batch_padded_tokens: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("barge_runner".into()), None).expect("a valid prefix");
        let requests =
            IntCounterVec::new(Opts::new("requests_total", "Requests answered, by outcome"), &["outcome"])
                .expect("valid metric");
        let prompt_tokens =
            IntCounter::new("prompt_tokens_total", "Tokens read by the model").expect("valid metric");
        let completion_tokens =
            IntCounter::new("completion_tokens_total", "Tokens generated").expect("valid metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("batch_size", "Sequences per model batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("valid metric");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new("batch_seconds", "Model time per batch")
                .buckets(prometheus::exponential_buckets(0.005, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        let batch_padded_tokens = Histogram::with_opts(
            HistogramOpts::new("batch_padded_tokens", "Tokens per batch after padding")
                .buckets(prometheus::exponential_buckets(16.0, 2.0, 12).expect("valid buckets")),
        )
        .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(prompt_tokens.clone()),
            Box::new(completion_tokens.clone()),
            Box::new(batch_size.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(batch_padded_tokens.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            batch_size,
            batch_seconds,
            batch_padded_tokens,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_text_format() {
        let m = Metrics::new();
        m.requests.with_label_values(&["completed"]).inc_by(3);
        m.batch_size.observe(32.0);
        let text = m.render();
        assert!(text.contains("barge_runner_requests_total{outcome=\"completed\"} 3"), "{text}");
        assert!(text.contains("barge_runner_batch_size_bucket"), "{text}");
    }
}
