//! What runner pods report is untrusted: a BatchJob may set `spec.image`, so any program can
//! answer `/progress` or write a termination message. Every number is brought into a range in
//! which the plan's sums, products and durations cannot overflow or panic, before the plan sees
//! it; a report that cannot be made sane is dropped.

use barge_api::{Counts, Progress, TerminationMessage};

/// Requests, lines or tokens one shard can plausibly report: far above any real job (2^40 is
/// about 10^12), far below where sums over thousands of shards could overflow a u64.
pub const MAX_COUNT: u64 = 1 << 40;

/// Bytes of one shard's input range (1 PiB).
pub const MAX_BYTES: u64 = 1 << 50;

/// Requests or tokens per second one pod can plausibly reach.
pub const MAX_RATE: f64 = 1e9;

/// The largest `/progress` answer read; a longer one is dropped unread.
pub const MAX_PROGRESS_BODY: usize = 64 * 1024;

pub fn counts(c: Counts) -> Counts {
    Counts {
        lines: c.lines.min(MAX_COUNT),
        completed: c.completed.min(MAX_COUNT),
        failed: c.failed.min(MAX_COUNT),
        prompt_tokens: c.prompt_tokens.min(MAX_COUNT),
        completion_tokens: c.completion_tokens.min(MAX_COUNT),
    }
}

/// A rate within `[0, MAX_RATE]`; NaN and negative rates are 0 (unknown).
pub fn rate(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 { 0.0 } else { x.min(MAX_RATE) }
}

pub fn progress(p: Progress) -> Progress {
    let bytes_total = p.bytes_total.min(MAX_BYTES);
    Progress {
        counts: counts(p.counts),
        requests_per_second: rate(p.requests_per_second),
        tokens_per_second: rate(p.tokens_per_second),
        bytes_done: p.bytes_done.min(bytes_total),
        bytes_total,
        ..p
    }
}

pub fn termination_message(tm: TerminationMessage) -> TerminationMessage {
    TerminationMessage { counts: counts(tm.counts), unprocessed: tm.unprocessed.min(MAX_COUNT), ..tm }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rps: f64, count: u64) -> Progress {
        let c = Counts {
            lines: count,
            completed: count,
            failed: count,
            prompt_tokens: count,
            completion_tokens: count,
        };
        Progress {
            shard: barge_api::ShardId::WHOLE,
            counts: c,
            requests_per_second: rps,
            tokens_per_second: rps,
            started: String::new(),
            done: false,
            bytes_done: u64::MAX,
            bytes_total: 10,
        }
    }

    #[test]
    fn rates_are_finite_and_bounded() {
        for (given, want) in [
            (1e-300, 1e-300),
            (-5.0, 0.0),
            (f64::NAN, 0.0),
            (f64::INFINITY, MAX_RATE),
            (f64::MAX, MAX_RATE),
            (12.5, 12.5),
        ] {
            let p = progress(report(given, 1));
            assert_eq!((p.requests_per_second, p.tokens_per_second), (want, want), "{given}");
        }
    }

    #[test]
    fn counts_and_bytes_are_capped() {
        let p = progress(report(1.0, u64::MAX));
        assert_eq!(p.counts.completed, MAX_COUNT);
        assert_eq!(p.counts.completion_tokens, MAX_COUNT);
        assert_eq!((p.bytes_done, p.bytes_total), (10, 10), "done never exceeds the range");
        let sum: u64 = (0..4096).map(|_| p.counts.completed + p.counts.failed).sum();
        assert!(sum > 0, "thousands of capped shards still sum without overflow");
    }
}
