//! The decoder's CPU kernels, as candle custom ops over the fused Q|K|V projection of a step:
//! rotary embeddings at each token's own position, the write of new keys and values into the
//! block cache, and attention of every token over its own sequence's cached prefix. Sequences
//! of different lengths (prefill chunks and single decode tokens) share one step.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::fast;
use super::kv_cache::{LayerKv, row};

/// How llama.cpp rounds a matrix product's activations for a weight type (ggml's
/// `vec_dot_type`): GGUF weights are meant to be run with this arithmetic, and applying the
/// same rounding to the f32 path gives llama.cpp's numbers, not merely close ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActQuant {
    /// Kept in f32 (f32 weights, safetensors models).
    None,
    /// Rounded to f16 (f16 weights).
    F16,
    /// 8-bit blocks of 32 with an f16 scale (Q4_0, Q5_0, Q8_0 weights; Q4_1 and Q5_1 use the
    /// same values in their Q8_1 blocks).
    Q8Block32,
    /// 8-bit blocks of 256 with an f32 scale (k-quant weights).
    Q8K,
}

impl ActQuant {
    pub fn for_weight(dtype: candle_core::quantized::GgmlDType) -> Self {
        use candle_core::quantized::GgmlDType as T;
        match dtype {
            T::F32 => ActQuant::None,
            T::F16 | T::BF16 => ActQuant::F16,
            T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q8_0 | T::Q8_1 => ActQuant::Q8Block32,
            T::Q2K | T::Q3K | T::Q4K | T::Q5K | T::Q6K | T::Q8K => ActQuant::Q8K,
        }
    }

    /// Rounds one row in place.
    fn round_row(self, x: &mut [f32]) {
        match self {
            ActQuant::None => {}
            ActQuant::F16 => x.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
            ActQuant::Q8Block32 => {
                // The block kernels' own quantization, turned back into values.
                let mut q = [0i8; 32];
                for block in x.chunks_mut(32) {
                    let (d, _) = super::quant::quantize_block(block, &mut q);
                    block.iter_mut().zip(&q).for_each(|(v, &q)| *v = q as f32 * d);
                }
            }
            ActQuant::Q8K => {
                for block in x.chunks_mut(256) {
                    let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    if max == 0.0 {
                        block.iter_mut().for_each(|v| *v = 0.0);
                        continue;
                    }
                    let iscale = -128.0 / max;
                    let d = 1.0 / iscale;
                    block.iter_mut().for_each(|v| *v = (iscale * *v).round_ties_even().min(127.0) * d);
                }
            }
        }
    }
}

/// [`ActQuant`] over the rows of a (rows, features) matrix.
pub struct RoundActivations(pub ActQuant);

impl CustomOp1 for RoundActivations {
    fn name(&self) -> &'static str {
        "barge-round-activations"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = storage.as_slice::<f32>()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("rounding activations needs a contiguous input");
        };
        let (_, cols) = layout.shape().dims2()?;
        let mut out = data[start..end].to_vec();
        out.par_chunks_mut(cols.max(1)).for_each(|row| self.0.round_row(row));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `x` with its rows rounded as `q` says (unchanged off the CPU or for [`ActQuant::None`]).
pub fn round_activations(x: &Tensor, q: ActQuant) -> Result<Tensor> {
    if q == ActQuant::None || !x.device().is_cpu() {
        return Ok(x.clone());
    }
    x.contiguous()?.apply_op1_no_bwd(&RoundActivations(q))
}

#[inline]
fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// cos and sin of every position × frequency, computed once as ggml does: in f32, each
/// frequency's angle the previous one's times `base^(-2/d)`.
pub struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    /// GGUF llama weights pair dimensions (2i, 2i+1); Hugging Face checkpoints pair (i, i + d/2).
    pub interleaved: bool,
}

impl Rope {
    pub fn new(head_dim: usize, max_positions: usize, base: f32, interleaved: bool) -> Self {
        Self::with_factors(head_dim, max_positions, base, interleaved, None)
    }

    /// With per-frequency divisors (GGUF `rope_freqs.weight`, Llama 3.1's long-context
    /// scaling): frequency i turns by its angle / `factors[i]`, as ggml applies them.
    pub fn with_factors(
        head_dim: usize,
        max_positions: usize,
        base: f32,
        interleaved: bool,
        factors: Option<&[f32]>,
    ) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        let step = base.powf(-2.0 / head_dim as f32);
        for p in 0..max_positions {
            let mut angle = p as f32;
            for i in 0..half {
                let a = factors.map_or(angle, |f| angle / f[i]);
                cos.push(a.cos());
                sin.push(a.sin());
                angle *= step;
            }
        }
        Rope { cos, sin, half, interleaved }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates each head of `x` (heads × head_dim values) to position `pos`.
    #[inline(always)]
    fn apply(&self, x: &mut [f32], pos: usize) {
        let d = 2 * self.half;
        let (cos, sin) =
            (&self.cos[pos * self.half..][..self.half], &self.sin[pos * self.half..][..self.half]);
        for head in x.chunks_exact_mut(d) {
            for i in 0..self.half {
                let (a, b) = if self.interleaved { (2 * i, 2 * i + 1) } else { (i, i + self.half) };
                let (x0, x1) = (head[a], head[b]);
                // Which product is fused is as in ggml's build (GCC contracts `a·b ± c·d`).
                head[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
                head[b] = x0.mul_add(sin[i], x1 * cos[i]);
            }
        }
    }
}

/// Where each token of a step sits: its sequence (an index into `tables`) and position.
pub struct StepLayout {
    pub positions: Vec<usize>,
    pub seq_of_token: Vec<usize>,
    pub tables: Vec<Vec<u32>>,
    /// Each sequence's prompt length. llama.cpp reads a prompt in one batch and generates one
    /// token at a time, and its attention adds up in a different order in the two cases;
    /// following it per token (not per step) keeps results independent of the batch.
    pub prompt_lens: Vec<usize>,
}

/// One layer's attention for a step: `qkv` is (tokens, (heads + 2·kv_heads)·head_dim), the
/// result (tokens, heads·head_dim).
pub struct PagedAttention<'a> {
    pub layout: &'a StepLayout,
    pub kv: &'a Mutex<LayerKv>,
    pub rope: &'a Rope,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores (1/√head_dim for most models).
    pub scale: f32,
    /// Sliding-window layers see only the last `window` positions.
    pub window: Option<usize>,
    /// Per-head RMS norms of queries and keys before the rotation (Gemma 3), with their epsilon.
    pub qk_norm: Option<(&'a [f32], &'a [f32], f32)>,
    /// Keys, values, queries and attention weights rounded to f16 as llama.cpp's default f16
    /// cache does (GGUF models), so results match it.
    pub f16_cache: bool,
}

impl PagedAttention<'_> {
    /// Queries of every token (normed, rotated, rounded) into `q`; keys and values into the cache.
    #[inline(always)]
    fn prepare(&self, qkv: &[f32], q: &mut [f32], kv: &mut LayerKv) {
        let d = self.head_dim;
        let (q_dim, kv_dim) = (self.heads * d, self.kv_heads * d);
        let width = q_dim + 2 * kv_dim;
        for (t, src) in qkv.chunks_exact(width).enumerate() {
            let pos = self.layout.positions[t];
            let qt = &mut q[t * q_dim..(t + 1) * q_dim];
            qt.copy_from_slice(&src[..q_dim]);
            if let Some((qn, _, eps)) = self.qk_norm {
                head_norm(qt, qn, eps);
            }
            self.rope.apply(qt, pos);
            if self.f16_cache {
                qt.iter_mut().for_each(|v| *v = f16_round(*v));
            }
            let r = row(&self.layout.tables[self.layout.seq_of_token[t]], pos) * kv_dim;
            let k = &mut kv.k[r..r + kv_dim];
            k.copy_from_slice(&src[q_dim..q_dim + kv_dim]);
            if let Some((_, kn, eps)) = self.qk_norm {
                head_norm(k, kn, eps);
            }
            self.rope.apply(k, pos);
            let v = &mut kv.v[r..r + kv_dim];
            v.copy_from_slice(&src[q_dim + kv_dim..]);
            if self.f16_cache {
                k.iter_mut().chain(v.iter_mut()).for_each(|x| *x = f16_round(*x));
            }
        }
    }

    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    fn prepare_fma(&self, qkv: &[f32], q: &mut [f32], kv: &mut LayerKv) {
        self.prepare(qkv, q, kv)
    }

    /// Token `t`'s attention over its sequence's cached positions, every head, into `out`.
    #[inline(always)]
    fn attend(&self, t: usize, q: &[f32], kv: &LayerKv, out: &mut [f32]) {
        let d = self.head_dim;
        let (q_dim, kv_dim) = (self.heads * d, self.kv_heads * d);
        let group = self.heads / self.kv_heads;
        let pos = self.layout.positions[t];
        let seq = self.layout.seq_of_token[t];
        let first = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let table = &self.layout.tables[seq];
        let prompt_len = self.layout.prompt_lens.get(seq).copied().unwrap_or(0);
        let batched = pos < prompt_len && prompt_len > 1;
        let rows: Vec<usize> = (first..=pos).map(|p| row(table, p) * kv_dim).collect();
        let mut scores = vec![0f32; rows.len()];
        let mut scratch = vec![0f32; 64 * d];
        for h in 0..self.heads {
            let qh = &q[t * q_dim + h * d..][..d];
            let off = (h / group) * d;
            for (s, &r) in scores.iter_mut().zip(&rows) {
                let k = &kv.k[r + off..r + off + d];
                *s = if batched && d.is_multiple_of(16) { dot_tiled(k, qh) } else { dot_f16(k, qh) }
                    * self.scale;
            }
            softmax(&mut scores, first);
            if self.f16_cache {
                scores.iter_mut().for_each(|w| *w = f16_round(*w));
            }
            let oh = &mut out[h * d..(h + 1) * d];
            let values = rows.iter().map(|&r| &kv.v[r + off..r + off + d]);
            if batched {
                weighted_sum_tiled(values, &scores, first, oh, &mut scratch);
            } else {
                weighted_sum_f16(values, &scores, first, oh, &mut scratch);
            }
        }
    }

    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    fn attend_fma(&self, t: usize, q: &[f32], kv: &LayerKv, out: &mut [f32]) {
        self.attend(t, q, kv, out)
    }
}

/// RMS-normalises each head of `x` in place with the per-dimension `weight`.
#[inline(always)]
fn head_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let mut normed = vec![0f32; weight.len()];
    for head in x.chunks_exact_mut(weight.len()) {
        rms_norm_row(head, weight, eps, &mut normed);
        head.copy_from_slice(&normed);
    }
}

impl CustomOp1 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "barge-paged-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = storage.as_slice::<f32>()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("paged attention needs a contiguous input");
        };
        let qkv = &data[start..end];
        let (tokens, width) = layout.shape().dims2()?;
        let d = self.head_dim;
        let (q_dim, kv_dim) = (self.heads * d, self.kv_heads * d);
        if width != q_dim + 2 * kv_dim || tokens != self.layout.positions.len() {
            candle_core::bail!(
                "paged attention got {tokens}x{width}, expected {}x{}",
                self.layout.positions.len(),
                q_dim + 2 * kv_dim
            );
        }
        let mut q = vec![0f32; tokens * q_dim];
        let mut guard =
            self.kv.lock().map_err(|_| candle_core::Error::Msg("a KV cache lock was poisoned".into()))?;
        fast!(self.prepare_fma(qkv, &mut q, &mut guard), self.prepare(qkv, &mut q, &mut guard));
        let kv = &*guard;
        let mut out = vec![0f32; tokens * q_dim];
        out.par_chunks_mut(q_dim)
            .enumerate()
            .for_each(|(t, out)| fast!(self.attend_fma(t, &q, kv, out), self.attend(t, &q, kv, out)));
        Ok((CpuStorage::F32(out), Shape::from((tokens, q_dim))))
    }
}

// llama.cpp's attention arithmetic (f16 cache, no flash attention, AVX-512 build): a prompt's
// products go through llamafile's tiled GEMM (one 16-lane accumulator per output), a generated
// token's through `ggml_vec_dot_f16` (four 16-lane accumulators per 64 elements); scores are
// laid out by cache position, so a position's lane is fixed by its index.

/// ggml's `_mm512_reduce_add_ps` (GCC's expansion): halves, quarters, then pairs.
#[inline(always)]
fn reduce16(a: &[f32; 16]) -> f32 {
    let t8: [f32; 8] = std::array::from_fn(|i| a[i + 8] + a[i]);
    let t4: [f32; 4] = std::array::from_fn(|i| t8[i + 4] + t8[i]);
    (t4[0] + t4[2]) + (t4[1] + t4[3])
}

/// `ggml_vec_dot_f16` over values already rounded to f16.
#[inline(always)]
fn dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let full = x.len() - x.len() % 64;
    let mut acc = [[0f32; 16]; 4];
    for (xc, yc) in x[..full].chunks_exact(64).zip(y[..full].chunks_exact(64)) {
        for (j, acc) in acc.iter_mut().enumerate() {
            for (l, a) in acc.iter_mut().enumerate() {
                *a = xc[16 * j + l].mul_add(yc[16 * j + l], *a);
            }
        }
    }
    let mut sum = reduce_four(&acc) as f64;
    for (a, b) in x[full..].iter().zip(&y[full..]) {
        sum += (a * b) as f64;
    }
    sum as f32
}

/// The four accumulators of `ggml_vec_dot_f16` folded as `GGML_F16_VEC_REDUCE` folds them.
#[inline(always)]
fn reduce_four(acc: &[[f32; 16]; 4]) -> f32 {
    let folded: [f32; 16] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    reduce16(&folded)
}

/// llamafile's tiled f16 GEMM for one output (length a multiple of 16): lane `i % 16`
/// accumulates, then one reduction.
#[inline(always)]
fn dot_tiled(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (xc, yc) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = xc[l].mul_add(yc[l], *a);
        }
    }
    reduce16(&acc)
}

/// ggml's soft_max over a row of cache positions `first..`: exponentials with ggml's `expf`,
/// summed in f64 sixteen positions at a time, then scaled by the f32 reciprocal.
#[inline(always)]
fn softmax(scores: &mut [f32], first: usize) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    scores.iter_mut().for_each(|s| *s = ggml_expf(*s - max));
    let mut sum = 0f64;
    let mut lanes = [0f32; 16];
    for (i, &e) in scores.iter().enumerate() {
        let p = first + i;
        lanes[p % 16] = e;
        if p % 16 == 15 || i + 1 == scores.len() {
            sum += reduce16(&lanes) as f64;
            lanes = [0f32; 16];
        }
    }
    let inv = (1.0 / sum) as f32;
    scores.iter_mut().for_each(|s| *s *= inv);
}

/// Σ weights·values per dimension, each position's product added into the accumulator row
/// of its lane: `acc` holds `lanes` rows of `out.len()` (rows are vectors over the dimensions,
/// so the loop vectorises while each dimension keeps ggml's order).
#[inline(always)]
fn accumulate_lanes<'v>(
    values: impl Iterator<Item = &'v [f32]>,
    weights: &[f32],
    first: usize,
    acc: &mut [f32],
    lanes: usize,
) {
    let d = acc.len() / lanes;
    for (i, (v, &w)) in values.zip(weights).enumerate() {
        let row = &mut acc[((first + i) % lanes) * d..][..d];
        for (a, &x) in row.iter_mut().zip(v) {
            *a = x.mul_add(w, *a);
        }
    }
}

/// [`reduce16`] down the sixteen rows of `acc` (16 × `out.len()`), for every column at once.
#[inline(always)]
fn reduce16_rows(acc: &mut [f32], out: &mut [f32]) {
    let d = out.len();
    // Row l += row l + 8 (l < 8), then row l += row l + 4 (l < 4): additions commute exactly.
    for half in [8, 4] {
        for l in 0..half {
            let (lo, hi) = acc.split_at_mut((l + half) * d);
            for (a, b) in lo[l * d..(l + 1) * d].iter_mut().zip(&hi[..d]) {
                *a += *b;
            }
        }
    }
    for (c, o) in out.iter_mut().enumerate() {
        *o = (acc[c] + acc[2 * d + c]) + (acc[d + c] + acc[3 * d + c]);
    }
}

/// Σ weights·values per dimension as llamafile's tiled GEMM adds them (prompt tokens):
/// one 16-lane accumulator. `scratch` is at least 16 × `out.len()`.
#[inline(always)]
fn weighted_sum_tiled<'v>(
    values: impl Iterator<Item = &'v [f32]>,
    weights: &[f32],
    first: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let acc = &mut scratch[..16 * out.len()];
    acc.fill(0.0);
    accumulate_lanes(values, weights, first, acc, 16);
    reduce16_rows(acc, out);
}

/// Σ weights·values per dimension as `ggml_vec_dot_f16` adds them (generated tokens): four
/// 16-lane accumulators over each 64 positions, folded `(0 + 2) + (1 + 3)`. `scratch` is at
/// least 64 × `out.len()`.
#[inline(always)]
fn weighted_sum_f16<'v>(
    values: impl Iterator<Item = &'v [f32]>,
    weights: &[f32],
    first: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let d = out.len();
    let acc = &mut scratch[..64 * d];
    acc.fill(0.0);
    accumulate_lanes(values, weights, first, acc, 64);
    // Row 16j + l is accumulator j's lane l.
    let (first_half, second_half) = acc.split_at_mut(32 * d);
    for l in 0..16 {
        let (a0, a1) = first_half.split_at_mut(16 * d);
        let (a2, a3) = second_half.split_at_mut(16 * d);
        let r = l * d..(l + 1) * d;
        for (((x0, x1), x2), x3) in
            a0[r.clone()].iter_mut().zip(&a1[r.clone()]).zip(&a2[r.clone()]).zip(&a3[r])
        {
            *x0 = (*x0 + *x2) + (*x1 + *x3);
        }
    }
    reduce16_rows(&mut first_half[..16 * d], out);
}

/// ggml's AVX-512 `ggml_v_expf`: 2ⁿ·p(b) with a degree-5 polynomial, where n = round(x/ln 2).
/// Up to ~1.5 ulp from the true value; llama.cpp's softmax and SiLU use it.
#[inline(always)]
pub fn ggml_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let shift = c(0x4b40_0000); // 1.5·2²³: adding it rounds to an integer
    let z = x.mul_add(c(0x3fb8_aa3b), shift); // x/ln 2
    let n = z - shift;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    // vscalefps: j·2ⁿ rounded once (2ⁿ is exact in f64 for |n| ≤ 192).
    (j as f64 * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
}

/// The gate's activation in a gated feed-forward layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// SwiGLU (Llama).
    Silu,
    /// GeGLU with the tanh approximation (Gemma).
    GeluTanh,
}

impl Gate {
    #[inline(always)]
    fn apply(self, g: f32) -> f32 {
        match self {
            Gate::Silu => g / (1.0 + ggml_expf(0.0 - g)),
            Gate::GeluTanh => {
                // ggml evaluates GELU from a table over f16 inputs with f16 results; GeGLU
                // models come from GGUF files, so do the same to follow llama.cpp.
                let g = f16_round(g);
                let c = (2.0 / std::f32::consts::PI).sqrt();
                f16_round(0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh()))
            }
        }
    }
}

/// `act(gate) · up` from the fused gate|up projection: (rows, 2·n) → (rows, n).
pub struct SwiGlu(pub Gate);

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "barge-gated-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = storage.as_slice::<f32>()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("swiglu needs a contiguous input");
        };
        let (rows, width) = layout.shape().dims2()?;
        let n = width / 2;
        let mut out = vec![0f32; rows * n];
        out.par_chunks_mut(n)
            .zip(data[start..end].par_chunks(width))
            .for_each(|(o, x)| fast!(self.row_fma(x, o), self.row(x, o)));
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
}

impl SwiGlu {
    #[inline(always)]
    fn row(&self, x: &[f32], o: &mut [f32]) {
        let (gate, up) = x.split_at(o.len());
        // ggml runs SiLU sixteen at a time with its own expf and the rest with libm's.
        let vector = o.len() - o.len() % 16;
        for (i, ((o, &g), u)) in o.iter_mut().zip(gate).zip(up).enumerate() {
            let act = match self.0 {
                Gate::Silu if i >= vector => g / (1.0 + (-g).exp()),
                gate => gate.apply(g),
            };
            *o = act * u;
        }
    }

    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    fn row_fma(&self, x: &[f32], o: &mut [f32]) {
        self.row(x, o)
    }
}

/// RMS normalisation with ggml's arithmetic: the squares summed in f64, the mean rounded to
/// f32, then `(x · 1/√(mean + ε)) · w`. The next layer's activations are quantized to 8 bits,
/// so a last-bit difference here moves whole quantization steps there.
#[inline(always)]
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * w;
    }
}

/// [`rms_norm_row`] over the rows of a (rows, features) matrix, the weight as the second input.
struct RmsNorm(f32);

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "barge-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("rms norm needs contiguous inputs");
        };
        let (x, w) = (&s1.as_slice::<f32>()?[a..b], &s2.as_slice::<f32>()?[c..d]);
        let cols = w.len();
        if cols == 0 || x.len() % cols != 0 {
            candle_core::bail!("rms norm of {} values with a weight of {cols}", x.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, x)| rms_norm_row(x, w, self.0, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMS norm of each row of `x`: [`rms_norm_row`] on the CPU, candle's elsewhere.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op2_no_bwd(w, &RmsNorm(eps));
    }
    candle_nn::ops::rms_norm(x, w, eps)
}

/// The gated activation; plain candle ops on devices without the CPU kernel.
pub fn gated(x: &Tensor, gate: Gate) -> Result<Tensor> {
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op1_no_bwd(&SwiGlu(gate));
    }
    let n = x.dim(1)? / 2;
    let g = x.narrow(1, 0, n)?;
    let g = match gate {
        Gate::Silu => candle_nn::ops::silu(&g)?,
        Gate::GeluTanh => g.gelu()?,
    };
    g * x.narrow(1, n, n)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::kv_cache::BLOCK;
    use candle_core::Device;

    /// Attention for one sequence written out naively: the kernel over a scattered block table
    /// must give the same numbers.
    #[test]
    fn paged_attention_equals_naive_causal_attention() -> Result<()> {
        for window in [None, Some(5)] {
            // The prompt's (tiled) order of additions and the generated tokens' order.
            for prompt_len in [21, 0] {
                attention_case(window, prompt_len)?;
            }
        }
        Ok(())
    }

    fn attention_case(window: Option<usize>, prompt_len: usize) -> Result<()> {
        let (heads, kv_heads, d, len) = (4, 2, 8, 21);
        let width = (heads + 2 * kv_heads) * d;
        let values: Vec<f32> = (0..len * width).map(|i| (i * 31 % 97) as f32 / 40.0 - 1.2).collect();
        let rope = Rope::new(d, 64, 10000.0, true);
        let kv = Mutex::new(LayerKv {
            k: vec![0.0; 4 * BLOCK * kv_heads * d],
            v: vec![0.0; 4 * BLOCK * kv_heads * d],
        });
        let layout = StepLayout {
            positions: (0..len).collect(),
            seq_of_token: vec![0; len],
            tables: vec![vec![3, 1]],
            prompt_lens: vec![prompt_len],
        };
        let op = PagedAttention {
            layout: &layout,
            kv: &kv,
            rope: &rope,
            heads,
            kv_heads,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
            window,
            qk_norm: None,
            f16_cache: false,
        };
        let got = Tensor::from_vec(values.clone(), (len, width), &Device::Cpu)?.apply_op1_no_bwd(&op)?;
        let got = got.flatten_all()?.to_vec1::<f32>()?;

        let (qd, kvd) = (heads * d, kv_heads * d);
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for t in 0..len {
            let r = &values[t * width..(t + 1) * width];
            let (mut q, mut k) = (r[..qd].to_vec(), r[qd..qd + kvd].to_vec());
            rope.apply(&mut q, t);
            rope.apply(&mut k, t);
            qs.push(q);
            ks.push(k);
            vs.push(r[qd + kvd..].to_vec());
        }
        for t in 0..len {
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
                let s: Vec<f32> = (first..=t)
                    .map(|j| {
                        (0..d).map(|i| qs[t][h * d + i] * ks[j][g * d + i]).sum::<f32>() / (d as f32).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for i in 0..d {
                    let want: f32 = (first..=t).map(|j| e[j - first] / z * vs[j][g * d + i]).sum();
                    let have = got[t * qd + h * d + i];
                    assert!((want - have).abs() < 1e-5, "token {t} head {h} dim {i}: {have} vs {want}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn frequency_factors_divide_each_frequency_s_angle() {
        let plain = Rope::new(8, 10, 10000.0, true);
        let ones = Rope::with_factors(8, 10, 10000.0, true, Some(&[1.0; 4]));
        assert_eq!((&plain.cos, &plain.sin), (&ones.cos, &ones.sin));
        let slowed = Rope::with_factors(8, 10, 10000.0, true, Some(&[2.0, 1.0, 1.0, 8.0]));
        for p in 0..10 {
            assert_eq!(slowed.cos[p * 4], (p as f32 / 2.0).cos(), "position {p}");
            assert_eq!(slowed.sin[p * 4 + 1], plain.sin[p * 4 + 1]);
            let last = (p as f32) * 10000f32.powf(-0.25).powi(3);
            assert!((slowed.sin[p * 4 + 3] - (last / 8.0).sin()).abs() < 1e-6);
        }
    }

    #[test]
    fn ggml_expf_is_within_two_ulp_and_saturates() {
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let (got, want) = (ggml_expf(x), (x as f64).exp());
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(((got as f64) - want).abs() <= 2.0 * ulp as f64, "expf({x}) = {got}, not {want}");
        }
        assert_eq!(ggml_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(ggml_expf(-200.0), 0.0);
        assert_eq!(ggml_expf(200.0), f32::INFINITY);
    }

    #[test]
    fn gated_activation_kernels_equal_candle_ops() -> Result<()> {
        let x = Tensor::from_vec(
            (0..24).map(|i| i as f32 / 6.0 - 2.0).collect::<Vec<f32>>(),
            (3, 8),
            &Device::Cpu,
        )?;
        let (g, u) = (x.narrow(1, 0, 4)?, x.narrow(1, 4, 4)?);
        for (gate, plain) in
            [(Gate::Silu, (candle_nn::ops::silu(&g)? * &u)?), (Gate::GeluTanh, (g.gelu()? * &u)?)]
        {
            let diff = (gated(&x, gate)? - plain)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            // GeGLU rounds through f16 as ggml does: within f16's precision of the exact value.
            assert!(diff < 5e-3, "{gate:?}: {diff}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    #[test]
    fn block_rounding_keeps_the_largest_value_and_127_levels() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let original = x.clone();
        ActQuant::Q8Block32.round_row(&mut x);
        for (block, orig) in x.chunks(32).zip(original.chunks(32)) {
            let amax = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = half::f16::from_f32(amax / 127.0).to_f32();
            for (v, o) in block.iter().zip(orig) {
                assert!((v / step - (v / step).round()).abs() < 1e-3, "{v} is a multiple of the scale");
                assert!((v - o).abs() <= step * 0.51 + amax * 1e-3, "{v} vs {o}");
            }
        }
        let mut k: Vec<f32> = (0..256).map(|i| (i as f32).sin()).collect();
        let orig = k.clone();
        ActQuant::Q8K.round_row(&mut k);
        assert!(k.iter().zip(&orig).all(|(a, b)| (a - b).abs() < 0.01));
    }
}
