//! What a job's compute cost: GPU-seconds (or CPU-seconds for CPU-only jobs) of every runner
//! pod, restarts included, times the hourly price of its unit.

use barge_api::batchjob::{BatchJobSpec, Cost};

use crate::config::PriceTable;

/// The unit a job is priced by, and how many of it each runner pod holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub unit: &'static str,
    pub units_per_pod: f64,
    pub per_hour: f64,
    pub currency: String,
    pub source: String,
}

pub fn rate(spec: &BatchJobSpec, cpu_cores: f64, table: &PriceTable) -> Rate {
    let gpus = spec.resources.as_ref().map_or(0, |r| r.gpus);
    let (unit, units_per_pod) = if gpus > 0 { ("gpu", f64::from(gpus)) } else { ("cpu", cpu_cores) };
    if let Some(p) = &spec.pricing {
        return Rate {
            unit,
            units_per_pod,
            per_hour: p.per_hour,
            currency: p.currency.clone(),
            source: "spec.pricing".into(),
        };
    }
    let (per_hour, source) = if gpus == 0 {
        (table.cpu_per_hour, "priceTable/cpu".to_string())
    } else {
        let gpu_type = spec.resources.as_ref().and_then(|r| r.gpu_type.as_deref());
        match gpu_type.and_then(|t| table.gpu_per_hour.get(t).map(|p| (t, *p))) {
            Some((t, p)) => (p, format!("priceTable/{t}")),
            None => (table.default_gpu_per_hour, "priceTable/default".to_string()),
        }
    };
    Rate { unit, units_per_pod, per_hour, currency: table.currency.clone(), source }
}

/// The cost of `pod_seconds` (wall-clock seconds summed over the job's runner pods).
pub fn cost(rate: &Rate, pod_seconds: f64, tokens: u64) -> Cost {
    // Whole seconds: the status then changes once a second at most, not on every float wobble.
    let unit_seconds = (pod_seconds * rate.units_per_pod).round();
    let amount = unit_seconds / 3600.0 * rate.per_hour;
    let per_million_tokens = (tokens > 0).then(|| round6(amount / (tokens as f64 / 1e6)));
    Cost {
        unit: rate.unit.into(),
        unit_seconds,
        per_hour: rate.per_hour,
        currency: rate.currency.clone(),
        amount: round6(amount),
        per_million_tokens,
        source: rate.source.clone(),
        display: display(amount, &rate.currency),
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn display(amount: f64, currency: &str) -> String {
    if amount >= 1.0 { format!("{amount:.2} {currency}") } else { format!("{amount:.4} {currency}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::JobBuilder;
    use barge_api::batchjob::Pricing;

    fn table() -> PriceTable {
        PriceTable {
            gpu_per_hour: [("nvidia-h100".to_string(), 2.5)].into_iter().collect(),
            ..PriceTable::default()
        }
    }

    #[test]
    fn gpu_jobs_pay_per_gpu_hour_from_the_price_table() {
        let job = JobBuilder::new("j").gpus(2, "nvidia-h100").build();
        let r = rate(&job.spec, 1.0, &table());
        assert_eq!((r.unit, r.units_per_pod, r.per_hour), ("gpu", 2.0, 2.5));
        assert_eq!(r.source, "priceTable/nvidia-h100");
        // Two pods of 2 GPUs each for half an hour: 2 GPU-hours.
        let c = cost(&r, 2.0 * 1800.0, 4_000_000);
        assert_eq!(c.unit_seconds, 7200.0);
        assert_eq!(c.amount, 5.0);
        assert_eq!(c.per_million_tokens, Some(1.25));
        assert_eq!(c.display, "5.00 USD");
    }

    #[test]
    fn an_unknown_gpu_type_falls_back_to_the_default_price() {
        let job = JobBuilder::new("j").gpus(1, "tpu-v9").build();
        let r = rate(&job.spec, 1.0, &table());
        assert_eq!((r.per_hour, r.source.as_str()), (2.0, "priceTable/default"));
    }

    #[test]
    fn cpu_jobs_pay_per_cpu_hour_and_spec_pricing_wins() {
        let mut job = JobBuilder::new("j").build();
        let r = rate(&job.spec, 4.0, &table());
        assert_eq!((r.unit, r.units_per_pod, r.per_hour), ("cpu", 4.0, 0.04));
        job.spec.pricing = Some(Pricing { per_hour: 1.0, currency: "EUR".into() });
        let r = rate(&job.spec, 4.0, &table());
        assert_eq!((r.per_hour, r.currency.as_str(), r.source.as_str()), (1.0, "EUR", "spec.pricing"));
        let c = cost(&r, 900.0, 0);
        assert_eq!((c.amount, c.per_million_tokens), (1.0, None));
    }
}
