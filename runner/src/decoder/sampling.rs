//! Choosing the next token from a sequence's logits: penalties, then greedy (temperature 0)
//! or seeded sampling with temperature, top-k and top-p. Each sequence owns its random
//! generator, so its output depends on its seed alone, never on what else is in the batch.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token.
    pub temperature: f32,
    /// 1 keeps every token.
    pub top_p: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    pub seed: u64,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Generated tokens so far and how often, for the penalties.
    counts: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler { rng: ChaCha8Rng::seed_from_u64(params.seed), params, counts: HashMap::new() }
    }

    /// Picks the next token and remembers it for the penalties. `logits` is scratch.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        let id = if p.temperature <= 0.0 { argmax(logits) } else { self.draw(logits) };
        *self.counts.entry(id).or_default() += 1;
        id
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut cand: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp())).collect();
        let by_prob_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_prob_desc);
            cand.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            cand.sort_unstable_by(by_prob_desc);
            let total: f32 = cand.iter().map(|c| c.1).sum();
            let (mut acc, mut keep) = (0.0, cand.len());
            for (i, c) in cand.iter().enumerate() {
                acc += c.1 / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, w) in &cand {
            if r < w {
                return id;
            }
            r -= w;
        }
        cand.last().map_or(0, |c| c.0)
    }
}

/// The first index of the largest value.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..50).map(|i| ((i * 7919) % 23) as f32 / 5.0).collect()
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() });
        let l = logits();
        assert_eq!(s.sample(&mut l.clone()), argmax(&l));
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_p: 0.9,
                top_k: 20,
                seed,
                ..Default::default()
            });
            (0..30).map(|_| s.sample(&mut logits())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let l = logits();
        for params in [
            SamplingParams { top_k: 1, seed: 3, ..Default::default() },
            SamplingParams { top_p: 1e-6, seed: 3, ..Default::default() },
        ] {
            let mut s = Sampler::new(params);
            for _ in 0..20 {
                assert_eq!(s.sample(&mut l.clone()), argmax(&l));
            }
        }
    }

    #[test]
    fn a_frequency_penalty_moves_off_a_repeated_token() {
        let mut s =
            Sampler::new(SamplingParams { temperature: 0.0, frequency_penalty: 100.0, ..Default::default() });
        let l = logits();
        let first = s.sample(&mut l.clone());
        assert_ne!(s.sample(&mut l.clone()), first);
    }
}
