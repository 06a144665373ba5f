//! The decoder's CPU kernels, as candle custom ops over the fused Q|K|V projection of a step:
//! rotary embeddings at each token's own position, the write of new keys and values into the
//! block cache, and attention of every token over its own sequence's cached prefix. Sequences
//! of different lengths (prefill chunks and single decode tokens) share one step.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
                for block in x.chunks_mut(32) {
                    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    // ggml keeps the scale as f16; the integers come from the exact one, rounded half to even
                    // as its SIMD quantizers do.
                    let d16 = half::f16::from_f32(d).to_f32();
                    block.iter_mut().for_each(|v| *v = (*v * id).round_ties_even() * d16);
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

/// cos and sin of every position × frequency, computed once.
pub struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    /// GGUF llama weights pair dimensions (2i, 2i+1); Hugging Face checkpoints pair (i, i + d/2).
    pub interleaved: bool,
}

impl Rope {
    pub fn new(head_dim: usize, max_positions: usize, base: f32, interleaved: bool) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for i in 0..half {
                let freq = 1.0 / (base as f64).powf(2.0 * i as f64 / head_dim as f64);
                let angle = p as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Rope { cos, sin, half, interleaved }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates each head of `x` (heads × head_dim values) to position `pos`.
    fn apply(&self, x: &mut [f32], pos: usize) {
        let d = 2 * self.half;
        let (cos, sin) =
            (&self.cos[pos * self.half..][..self.half], &self.sin[pos * self.half..][..self.half]);
        for head in x.chunks_exact_mut(d) {
            for i in 0..self.half {
                let (a, b) = if self.interleaved { (2 * i, 2 * i + 1) } else { (i, i + self.half) };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// Where each token of a step sits: its sequence (an index into `tables`) and position.
pub struct StepLayout {
    pub positions: Vec<usize>,
    pub seq_of_token: Vec<usize>,
    pub tables: Vec<Vec<u32>>,
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

/// RMS-normalises each head of `x` in place with the per-dimension `weight`.
fn head_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    for head in x.chunks_exact_mut(weight.len()) {
        let mean = head.iter().map(|v| v * v).sum::<f32>() / head.len() as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for (v, w) in head.iter_mut().zip(weight) {
            *v *= inv * w;
        }
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
        let kv = &mut *guard;
        for t in 0..tokens {
            let src = &qkv[t * width..(t + 1) * width];
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
        let kv = &*kv;
        let group = self.heads / self.kv_heads;
        let scale = self.scale;
        let mut out = vec![0f32; tokens * q_dim];
        out.par_chunks_mut(q_dim).enumerate().for_each(|(t, out)| {
            let pos = self.layout.positions[t];
            let first = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let table = &self.layout.tables[self.layout.seq_of_token[t]];
            let rows: Vec<usize> = (first..=pos).map(|p| row(table, p) * kv_dim).collect();
            let mut scores = vec![0f32; rows.len()];
            for h in 0..self.heads {
                let qh = &q[t * q_dim + h * d..][..d];
                let off = (h / group) * d;
                let mut max = f32::NEG_INFINITY;
                for (s, &r) in scores.iter_mut().zip(&rows) {
                    *s = dot(qh, &kv.k[r + off..r + off + d]) * scale;
                    max = max.max(*s);
                }
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                let oh = &mut out[h * d..(h + 1) * d];
                for (s, &r) in scores.iter().zip(&rows) {
                    let w = if self.f16_cache { f16_round(s * inv) } else { s * inv };
                    for (o, v) in oh.iter_mut().zip(&kv.v[r + off..r + off + d]) {
                        *o += w * v;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((tokens, q_dim))))
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: the compiler keeps them in one vector register.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
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
    #[inline]
    fn apply(self, g: f32) -> f32 {
        match self {
            Gate::Silu => g / (1.0 + (-g).exp()),
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
        out.par_chunks_mut(n).zip(data[start..end].par_chunks(width)).for_each(|(o, x)| {
            let (gate, up) = x.split_at(n);
            for ((o, &g), u) in o.iter_mut().zip(gate).zip(up) {
                *o = self.0.apply(g) * u;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
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
            attention_case(window)?;
        }
        Ok(())
    }

    fn attention_case(window: Option<usize>) -> Result<()> {
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
