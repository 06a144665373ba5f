//! Continuous batching: every step runs one forward pass over the next tokens of all running
//! sequences (one token each for those generating, a chunk of the prompt for those still
//! reading it). A sequence that finishes leaves at once and frees its cache blocks; waiting
//! ones join as soon as blocks and batch slots allow. The KV block pool is the memory budget:
//! a sequence joins only when the pool can hold its prompt, and if running sequences outgrow
//! the pool, the newest is set back to wait (its tokens are kept and recomputed later), so a
//! run never runs out of memory.

use std::collections::VecDeque;
use std::time::Instant;

use super::Decoder;
use super::kv_cache::{KvCache, blocks_for};
use super::ops::StepLayout;
use super::sampling::{Sampler, SamplingParams};
use super::vocab::Vocab;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences generating together.
    pub max_seqs: usize,
    /// Tokens in one forward pass (decode tokens plus prompt chunks).
    pub step_tokens: usize,
    /// Memory for the KV cache, in MiB (the memory budget).
    pub kv_cache_mib: usize,
}

#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The caller's handle, returned with the result.
    pub tag: u64,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends the generation; it is not part of the output.
    pub stop: Vec<String>,
}

use crate::types::Finish;

#[derive(Debug, Clone)]
pub struct GenResult {
    pub tag: u64,
    pub text: String,
    /// The generated ids, the end-of-turn token excluded.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Generated tokens, the end-of-turn token excluded.
    pub completion_tokens: usize,
    pub finish: Finish,
}

/// A request the engine cannot place: it would outgrow the whole KV cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub tag: u64,
    pub reason: String,
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub steps: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    pub preemptions: u64,
    pub forward_seconds: f64,
}

struct Seq {
    /// The request, its prompt moved into `tokens`.
    req: GenRequest,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    blocks: Vec<u32>,
    sampler: Sampler,
    text: Vec<u8>,
    generated: usize,
}

impl Seq {
    fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }
}

pub struct Engine {
    model: Box<dyn Decoder>,
    cache: KvCache,
    cfg: EngineConfig,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    refused: Vec<Refused>,
    logits_scratch: Vec<f32>,
    pub stats: EngineStats,
}

impl Engine {
    pub fn new(model: Box<dyn Decoder>, cfg: EngineConfig) -> Self {
        let (layers, kv_dim) = model.cache_shape();
        let block_bytes = KvCache::bytes_per_token(layers, kv_dim) * super::kv_cache::BLOCK;
        let blocks = cfg.kv_cache_mib.saturating_mul(1 << 20) / block_bytes.max(1);
        let cache = KvCache::new(layers, kv_dim, blocks);
        Engine {
            model,
            cache,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            refused: Vec::new(),
            logits_scratch: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    pub fn model(&self) -> &dyn Decoder {
        self.model.as_ref()
    }

    /// Tokens the whole cache holds: no single sequence may need more.
    pub fn capacity_tokens(&self) -> usize {
        self.cache.total_blocks() * super::kv_cache::BLOCK
    }

    pub fn max_seqs(&self) -> usize {
        self.cfg.max_seqs
    }

    /// Sequences queued or running.
    pub fn in_flight(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight() == 0
    }

    /// Queues a request, or refuses one whose prompt and `max_tokens` (up to the context) could
    /// never fit the cache: it would stop every other sequence. Callers check this first to
    /// give a better message; the engine does not rely on them.
    pub fn add(&mut self, mut req: GenRequest) -> Result<(), Refused> {
        let longest = req.prompt.len().saturating_add(req.max_tokens).min(self.model.context_len());
        if req.prompt.is_empty() || longest > self.capacity_tokens() {
            return Err(Refused {
                tag: req.tag,
                reason: format!(
                    "a prompt of {} tokens with max_tokens {} does not fit the KV cache of {} tokens",
                    req.prompt.len(),
                    req.max_tokens,
                    self.capacity_tokens()
                ),
            });
        }
        let sampler = Sampler::new(req.sampling.clone());
        let tokens = std::mem::take(&mut req.prompt);
        self.waiting.push_back(Seq {
            prompt_len: tokens.len(),
            tokens,
            req,
            computed: 0,
            blocks: Vec::new(),
            sampler,
            text: Vec::new(),
            generated: 0,
        });
        Ok(())
    }

    /// Requests dropped because they could not be placed, since the last call.
    pub fn take_refused(&mut self) -> Vec<Refused> {
        std::mem::take(&mut self.refused)
    }

    /// One forward pass; returns the sequences that finished in it.
    pub fn step(&mut self, vocab: &Vocab) -> candle_core::Result<Vec<GenResult>> {
        self.admit();
        let plan = self.plan();
        if plan.is_empty() {
            if self.is_idle() {
                return Ok(Vec::new());
            }
            // `add` refuses what can never fit, so this is not expected; if it happens, the
            // sequence that cannot run is dropped as refused rather than stopping the others.
            let stuck = if self.running.is_empty() { self.waiting.pop_front() } else { self.running.pop() };
            if let Some(mut seq) = stuck {
                self.cache.release(&mut seq.blocks);
                tracing::warn!(tag = seq.req.tag, "a sequence could not be placed in the KV cache");
                self.refused.push(Refused {
                    tag: seq.req.tag,
                    reason: format!(
                        "the request ({} tokens so far) could not be placed in the KV cache of {} tokens",
                        seq.tokens.len(),
                        self.capacity_tokens()
                    ),
                });
            }
            return Ok(Vec::new());
        }
        let mut tokens = Vec::new();
        let mut layout = StepLayout {
            positions: Vec::new(),
            seq_of_token: Vec::new(),
            tables: Vec::new(),
            prompt_lens: Vec::new(),
        };
        let mut logit_rows = Vec::new();
        let mut sampled = Vec::new();
        for (slot, &(i, chunk)) in plan.iter().enumerate() {
            let seq = &self.running[i];
            for p in seq.computed..seq.computed + chunk {
                tokens.push(seq.tokens[p]);
                layout.positions.push(p);
                layout.seq_of_token.push(slot);
            }
            layout.tables.push(seq.blocks.clone());
            layout.prompt_lens.push(seq.prompt_len);
            if seq.computed + chunk == seq.tokens.len() {
                logit_rows.push(tokens.len() - 1);
                sampled.push(i);
            }
            if chunk == 1 && seq.generated > 0 {
                self.stats.decode_tokens += 1;
            } else {
                self.stats.prefill_tokens += chunk as u64;
            }
        }
        let started = Instant::now();
        let logits = self.model.forward(&tokens, &layout, &logit_rows, &self.cache)?;
        self.stats.forward_seconds += started.elapsed().as_secs_f64();
        self.stats.steps += 1;
        for &(i, chunk) in &plan {
            self.running[i].computed += chunk;
        }
        let vocab_size = self.model.vocab_size();
        let context = self.model.context_len();
        let mut finished = Vec::new();
        for (row, &i) in sampled.iter().enumerate() {
            self.logits_scratch.clear();
            self.logits_scratch.extend_from_slice(&logits[row * vocab_size..(row + 1) * vocab_size]);
            let seq = &mut self.running[i];
            let id = seq.sampler.sample(&mut self.logits_scratch);
            if let Some(finish) = advance(seq, id, vocab, context) {
                finished.push((i, finish));
            }
        }
        // Remove from the back so earlier indices stay valid.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut results = Vec::with_capacity(finished.len());
        for (i, finish) in finished {
            let mut seq = self.running.remove(i);
            self.cache.release(&mut seq.blocks);
            let generated = seq.tokens.split_off(seq.prompt_len);
            results.push(GenResult {
                tag: seq.req.tag,
                tokens: generated,
                text: String::from_utf8_lossy(&seq.text).into_owned(),
                prompt_tokens: seq.prompt_len,
                completion_tokens: seq.generated,
                finish,
            });
        }
        Ok(results)
    }

    /// Moves waiting sequences in while slots and blocks allow, keeping one free block per
    /// running sequence so those already generating can grow.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_seqs {
            let Some(next) = self.waiting.front() else { break };
            let need = blocks_for(next.tokens.len() + 1);
            let reserve = self.running.len();
            if self.cache.free_blocks() < need + reserve && !self.running.is_empty() {
                break;
            }
            if self.cache.free_blocks() < need {
                break; // only possible for a request larger than the cache, refused earlier
            }
            if let Some(seq) = self.waiting.pop_front() {
                self.running.push(seq);
            }
        }
    }

    /// Which running sequences feed how many tokens this step, with their blocks allocated.
    /// Generating sequences come first (one token each), then prompt chunks in arrival order.
    fn plan(&mut self) -> Vec<(usize, usize)> {
        loop {
            let mut budget = self.cfg.step_tokens.max(self.cfg.max_seqs);
            let mut plan = Vec::new();
            let mut order: Vec<usize> = (0..self.running.len()).collect();
            order.sort_by_key(|&i| self.running[i].pending() > 1);
            for i in order {
                if budget == 0 {
                    break;
                }
                let chunk = self.running[i].pending().min(budget);
                budget -= chunk;
                plan.push((i, chunk));
            }
            let need: usize = plan
                .iter()
                .map(|&(i, chunk)| {
                    let s = &self.running[i];
                    blocks_for(s.computed + chunk).saturating_sub(s.blocks.len())
                })
                .sum();
            if need <= self.cache.free_blocks() || self.running.len() <= 1 {
                for &(i, chunk) in &plan {
                    let s = &mut self.running[i];
                    while s.blocks.len() < blocks_for(s.computed + chunk) {
                        match self.cache.alloc() {
                            Some(b) => s.blocks.push(b),
                            None => break,
                        }
                    }
                }
                // A lone sequence larger than the cache cannot run; it was refused at parse time.
                plan.retain(|&(i, chunk)| {
                    self.running[i].blocks.len() >= blocks_for(self.running[i].computed + chunk)
                });
                return plan;
            }
            // Out of blocks: the newest sequence waits again, its work to be recomputed.
            if let Some(mut seq) = self.running.pop() {
                self.cache.release(&mut seq.blocks);
                seq.computed = 0;
                self.waiting.push_front(seq);
                self.stats.preemptions += 1;
            }
        }
    }
}

/// Appends a sampled token; returns how the sequence ended, if it did.
fn advance(seq: &mut Seq, id: u32, vocab: &Vocab, context: usize) -> Option<Finish> {
    if vocab.is_stop(id) {
        return Some(Finish::EndOfTurn);
    }
    seq.tokens.push(id);
    seq.generated += 1;
    let before = seq.text.len();
    seq.text.extend_from_slice(vocab.piece(id));
    if let Some((at, stop)) = find_stop(&seq.text, before, &seq.req.stop) {
        seq.text.truncate(at);
        return Some(Finish::Stop(stop));
    }
    if seq.generated >= seq.req.max_tokens || seq.tokens.len() >= context {
        return Some(Finish::Length);
    }
    None
}

/// The earliest stop string that ends in the bytes appended after `before`.
fn find_stop(text: &[u8], before: usize, stops: &[String]) -> Option<(usize, String)> {
    let mut best: Option<(usize, String)> = None;
    for stop in stops.iter().filter(|s| !s.is_empty()) {
        let s = stop.as_bytes();
        let from = before.saturating_sub(s.len() - 1);
        if let Some(pos) = text[from..].windows(s.len()).position(|w| w == s) {
            let at = from + pos;
            if best.as_ref().is_none_or(|(b, _)| at < *b) {
                best = Some((at, stop.clone()));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_token_boundaries() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(find_stop(b"abcEN", 3, &stops), None);
        assert_eq!(find_stop(b"abcEND", 5, &stops), Some((3, "END".into())));
        assert_eq!(find_stop(b"x\n\nEND", 1, &stops), Some((1, "\n\n".into())));
    }
}
