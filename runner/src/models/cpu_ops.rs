//! Fused CPU kernels for encoder inference, as candle custom ops: a Linear layer with its bias
//! (and GELU) applied in the same pass over the output, and a GELU whose erf is a rational
//! polynomial the compiler vectorises (libm's scalar erf took 13 % of a MiniLM forward pass).

#[cfg(feature = "openblas")]
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// erf(x) as `x·P(x²)/Q(x²)` on [-4, 4] (erf is ±1 to f32 precision beyond): the rational
/// approximation Eigen and XLA use for f32, within 2e-7 of the true value.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as published, rounded by the compiler
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08;
    p = x2 * p + -2.10102402082508e-06;
    p = x2 * p + -5.69250639462346e-05;
    p = x2 * p + -7.34990630326855e-04;
    p = x2 * p + -2.95459980854025e-03;
    p = x2 * p + -1.60960333262415e-02;
    let p = x * p;
    let mut q = x2 * -1.45660718464996e-05 + -2.13374055278905e-04;
    q = x2 * q + -1.68282697438203e-03;
    q = x2 * q + -7.37332916720468e-03;
    q = x2 * q + -1.42647390514189e-02;
    p / q
}

/// GELU with the exact (erf) form BERT was trained with.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Adds `bias` to every row of `out` and applies GELU when asked, in one pass.
fn bias_epilogue(out: &mut [f32], bias: &[f32], gelu_after: bool) {
    for row in out.chunks_exact_mut(bias.len()) {
        if gelu_after {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = gelu(*v + b);
            }
        } else {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op} needs a contiguous f32 input"),
    }
}

/// `x·Wᵀ + b`, optionally followed by GELU, for a 2-D `x` of shape (rows, in).
#[cfg(feature = "openblas")]
pub struct FusedLinear {
    /// (out, in), row-major: the layout checkpoints store.
    pub weight: Arc<Vec<f32>>,
    pub bias: Option<Arc<Vec<f32>>>,
    pub out_dim: usize,
    pub gelu: bool,
    /// Decoders: every row computed by the same GEMM shape whatever else is in the batch (see
    /// [`Linear::batch_invariant`]).
    pub batch_invariant: bool,
}

/// Rows per GEMM tile in batch-invariant mode.
#[cfg(feature = "openblas")]
const TILE_ROWS: usize = 16;

#[cfg(feature = "openblas")]
impl FusedLinear {
    fn epilogue(&self, out: &mut [f32]) {
        if let Some(bias) = &self.bias {
            bias_epilogue(out, bias, self.gelu);
        } else if self.gelu {
            out.iter_mut().for_each(|v| *v = gelu(*v));
        }
    }
}

/// With OpenBLAS: GEMM and epilogue in one op, one block of rows per thread, each block's
/// epilogue run while it is still in cache.
#[cfg(feature = "openblas")]
impl CustomOp1 for FusedLinear {
    fn name(&self) -> &'static str {
        "barge-fused-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (out_dim, in_dim) = (self.out_dim, self.weight.len() / self.out_dim);
        let (rows, cols) = layout.shape().dims2()?;
        if cols != in_dim {
            candle_core::bail!("fused linear expects {in_dim} input features, got {cols}");
        }
        let mut out = vec![0f32; rows * out_dim];
        let threads = rayon::current_num_threads();
        if rows == 0 {
            // Nothing to multiply (a decoder step that samples no sequence).
        } else if self.batch_invariant {
            // OpenBLAS switches kernels with the matrix size (a small-matrix path, edge
            // kernels), which changes a row's rounding with the batch around it. Padding the rows
            // to whole tiles and splitting the weights by columns keeps every row's arithmetic
            // the same in any batch, and each weight is packed once per step.
            let padded = rows.div_ceil(TILE_ROWS) * TILE_ROWS;
            let xp: std::borrow::Cow<[f32]> = if padded == rows {
                x.into()
            } else {
                let mut v = x.to_vec();
                v.resize(padded * in_dim, 0.0);
                v.into()
            };
            let cols = out_dim.div_ceil(threads).div_ceil(16) * 16;
            let parts: Vec<(usize, Vec<f32>)> = (0..out_dim)
                .step_by(cols)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|c0| {
                    let n = cols.min(out_dim - c0);
                    let mut part = vec![0f32; padded * n];
                    super::blas::sgemm_nt(
                        padded,
                        n,
                        in_dim,
                        &xp,
                        &self.weight[c0 * in_dim..(c0 + n) * in_dim],
                        &mut part,
                    );
                    (c0, part)
                })
                .collect();
            for (c0, part) in parts {
                let n = part.len() / padded;
                for (dst, src) in out.chunks_exact_mut(out_dim).zip(part.chunks_exact(n)) {
                    dst[c0..c0 + n].copy_from_slice(src);
                }
            }
            self.epilogue(&mut out);
        } else {
            let block = rows.div_ceil(threads).max(1);
            out.par_chunks_mut(block * out_dim).zip(x.par_chunks(block * in_dim)).for_each(|(out, x)| {
                super::blas::sgemm_nt(x.len() / in_dim, out_dim, in_dim, x, &self.weight, out);
                self.epilogue(out);
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }
}

/// Without OpenBLAS: candle's GEMM, then bias (and GELU) in one parallel pass.
#[cfg(not(feature = "openblas"))]
pub struct BiasEpilogue {
    pub bias: Vec<f32>,
    pub gelu: bool,
}

#[cfg(not(feature = "openblas"))]
impl CustomOp1 for BiasEpilogue {
    fn name(&self) -> &'static str {
        "barge-bias-epilogue"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = contiguous_f32(storage, layout, self.name())?.to_vec();
        let n = self.bias.len();
        let block = (out.len() / n).div_ceil(rayon::current_num_threads()).max(1) * n;
        out.par_chunks_mut(block).for_each(|rows| bias_epilogue(rows, &self.bias, self.gelu));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Self-attention of one layer on the CPU, straight from the fused Q|K|V projection:
/// `qkv` is (n·len, 3·hidden) and the result the per-head contexts side by side, (n·len, hidden).
/// Padding keys get zero weight; padded queries are computed but never read by valid tokens.
#[cfg(feature = "openblas")]
pub struct FusedAttention {
    pub heads: usize,
    /// Tokens of each batch item before its padding.
    pub lengths: Arc<Vec<usize>>,
}

#[cfg(feature = "openblas")]
impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "barge-fused-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, self.name())?;
        let (rows, width) = layout.shape().dims2()?;
        let n = self.lengths.len();
        if n == 0 || rows % n != 0 || width % (3 * self.heads) != 0 {
            candle_core::bail!(
                "fused attention got {rows}x{width} for {n} sequences of {} heads",
                self.heads
            );
        }
        let (len, hidden) = (rows / n, width / 3);
        let d = hidden / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; rows * hidden];
        // One batch item per task: its rows of `out` are one contiguous block.
        out.par_chunks_mut(len * hidden)
            .zip(qkv.par_chunks(len * width))
            .zip(self.lengths.par_iter())
            .for_each(|((out, qkv), &valid)| {
                let valid = valid.clamp(1, len);
                let mut scores = vec![0f32; len * valid];
                for h in 0..self.heads {
                    let (q, k, v) = (&qkv[h * d..], &qkv[hidden + h * d..], &qkv[2 * hidden + h * d..]);
                    // scores (len × valid) = Q·Kᵀ over the valid keys only.
                    super::blas::sgemm_strided((len, valid, d), q, width, k, width, true, &mut scores, valid);
                    for row in scores.chunks_exact_mut(valid) {
                        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
                        let mut sum = 0.0;
                        for x in row.iter_mut() {
                            *x = (*x * scale - max).exp();
                            sum += *x;
                        }
                        let inv = 1.0 / sum;
                        row.iter_mut().for_each(|x| *x *= inv);
                    }
                    // context (len × d, row stride hidden) = P·V.
                    super::blas::sgemm_strided(
                        (len, d, valid),
                        &scores,
                        valid,
                        v,
                        width,
                        false,
                        &mut out[h * d..],
                        hidden,
                    );
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, hidden))))
    }
}

/// A Linear layer, optionally followed by GELU, holding its weights once, in the form its
/// device runs fastest.
pub enum Linear {
    /// CPU with OpenBLAS: the weights live only in the fused op.
    #[cfg(feature = "openblas")]
    Fused(FusedLinear),
    /// Candle's GEMM; on the CPU the bias (and GELU) then run as one fused epilogue.
    Candle {
        weight: Tensor,
        bias: Option<Tensor>,
        gelu: bool,
        #[cfg(not(feature = "openblas"))]
        epilogue: Option<BiasEpilogue>,
    },
}

impl Linear {
    /// `weight` is (out, in) and `bias` (out), as checkpoints store them.
    pub fn new(weight: Tensor, bias: Tensor, gelu: bool) -> Result<Self> {
        Self::with_bias(weight, Some(bias), gelu)
    }

    /// A layer without bias (decoders) when `bias` is `None`.
    pub fn with_bias(weight: Tensor, bias: Option<Tensor>, gelu: bool) -> Result<Self> {
        #[cfg(feature = "openblas")]
        if weight.device().is_cpu() {
            let out_dim = weight.dim(0)?;
            return Ok(Linear::Fused(FusedLinear {
                weight: Arc::new(weight.flatten_all()?.to_vec1::<f32>()?),
                bias: bias.map(|b| b.to_vec1::<f32>().map(Arc::new)).transpose()?,
                out_dim,
                gelu,
                batch_invariant: false,
            }));
        }
        #[cfg(not(feature = "openblas"))]
        let epilogue = match &bias {
            Some(b) if weight.device().is_cpu() => Some(BiasEpilogue { bias: b.to_vec1::<f32>()?, gelu }),
            _ => None,
        };
        Ok(Linear::Candle {
            weight,
            bias,
            gelu,
            #[cfg(not(feature = "openblas"))]
            epilogue,
        })
    }

    /// `x·Wᵀ + b`, then GELU when the layer has it.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            #[cfg(feature = "openblas")]
            Linear::Fused(op) => x.contiguous()?.apply_op1_no_bwd(op),
            #[cfg(not(feature = "openblas"))]
            Linear::Candle { weight, epilogue: Some(op), .. } => x.matmul(&weight.t()?)?.apply_op1_no_bwd(op),
            Linear::Candle { weight, bias, gelu, .. } => {
                let y = x.matmul(&weight.t()?)?;
                let y = match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                if *gelu { y.gelu_erf() } else { Ok(y) }
            }
        }
    }

    /// Makes each row's result independent of the other rows in the batch (decoders: a
    /// request's greedy answer must not depend on what it was batched with). Candle's own GEMM
    /// already is.
    pub fn batch_invariant(self) -> Self {
        match self {
            #[cfg(feature = "openblas")]
            Linear::Fused(mut op) => {
                op.batch_invariant = true;
                Linear::Fused(op)
            }
            other => other,
        }
    }

    /// Rows `ids` of the weight matrix, (ids, in): a tied embedding table looked up through
    /// the output layer that owns it, so the table is held once.
    pub fn rows(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        match self {
            #[cfg(feature = "openblas")]
            Linear::Fused(op) => {
                let width = op.weight.len() / op.out_dim;
                let mut out = Vec::with_capacity(ids.len() * width);
                for &id in ids {
                    let id = id as usize;
                    if id >= op.out_dim {
                        candle_core::bail!("token id {id} is outside the vocabulary of {}", op.out_dim);
                    }
                    out.extend_from_slice(&op.weight[id * width..(id + 1) * width]);
                }
                Tensor::from_vec(out, (ids.len(), width), device)
            }
            Linear::Candle { weight, .. } => {
                let ids = Tensor::from_slice(ids, ids.len(), weight.device())?;
                weight.index_select(&ids, 0)?.to_device(device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn erf_is_within_a_few_ulp_of_the_true_value() {
        let mut worst = 0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            let err = (erf(x as f32) as f64 - reference_erf(x)).abs();
            worst = worst.max(err);
        }
        assert!(worst < 5e-7, "worst error {worst}");
    }

    /// erf in f64: its Taylor series below 3 (cancellation costs ~3 of f64's 16 digits there),
    /// the asymptotic series of erfc above (erfc(3) is 2e-5, so its error is far below f32's).
    fn reference_erf(x: f64) -> f64 {
        let z = x.abs();
        let value = if z < 3.0 {
            let (mut sum, mut term) = (z, z);
            for n in 1..120 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let inv = 1.0 / (2.0 * z * z);
            let series = 1.0 - inv + 3.0 * inv * inv - 15.0 * inv * inv * inv;
            1.0 - (-z * z).exp() / (z * std::f64::consts::PI.sqrt()) * series
        };
        value.copysign(x)
    }

    #[test]
    fn fused_linear_equals_matmul_plus_bias_then_gelu() -> Result<()> {
        for (rows, inp, out) in [(37, 24, 40), (3, 24, 300)] {
            fused_linear_case(rows, inp, out)?;
        }
        Ok(())
    }

    fn fused_linear_case(rows: usize, inp: usize, out: usize) -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(
            (0..rows * inp).map(|i| ((i * 7) % 13) as f32 / 5.0 - 1.2).collect(),
            (rows, inp),
            &dev,
        )?;
        let w_vec: Vec<f32> = (0..out * inp).map(|i| ((i * 5) % 11) as f32 / 20.0 - 0.25).collect();
        let b_vec: Vec<f32> = (0..out).map(|i| i as f32 / 50.0 - 0.3).collect();
        let w = Tensor::from_vec(w_vec, (out, inp), &dev)?;
        let b = Tensor::from_vec(b_vec, out, &dev)?;
        for (gelu_after, invariant) in [(false, false), (true, false), (false, true), (true, true)] {
            let layer = Linear::new(w.clone(), b.clone(), gelu_after)?;
            let layer = if invariant { layer.batch_invariant() } else { layer };
            let fused = layer.forward(&x)?;
            let plain = x.matmul(&w.t()?)?.broadcast_add(&b)?;
            let plain = if gelu_after { plain.gelu_erf()? } else { plain };
            let diff = (fused - plain)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "gelu={gelu_after} batch-invariant={invariant}: max difference {diff}");
        }
        Ok(())
    }

    #[cfg(feature = "openblas")]
    #[test]
    fn fused_attention_equals_masked_softmax_attention_in_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (n, len, heads, d) = (3, 7, 4, 8);
        let hidden = heads * d;
        let lengths = vec![7, 5, 1];
        let values: Vec<f32> =
            (0..n * len * 3 * hidden).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.8).collect();
        let qkv = Tensor::from_vec(values, (n * len, 3 * hidden), &dev)?;
        let op = FusedAttention { heads, lengths: Arc::new(lengths.clone()) };
        let fused = qkv.apply_op1_no_bwd(&op)?;

        let mask: Vec<f32> =
            lengths.iter().flat_map(|&l| (0..len).map(move |j| if j < l { 0.0 } else { f32::MIN })).collect();
        let mask = Tensor::from_vec(mask, (n, 1, 1, len), &dev)?;
        let split = qkv.reshape((n, len, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
        let q = (split.get(0)?.contiguous()? * (1.0 / (d as f64).sqrt()))?;
        let (k, v) = (split.get(1)?.contiguous()?, split.get(2)?.contiguous()?);
        let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?.broadcast_add(&mask)?)?;
        let reference = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((n * len, hidden))?;

        let diff = (fused - reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max difference {diff}");
        Ok(())
    }
}
