//! GGUF's 32-weight block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) multiplied the way llama.cpp's
//! CPU backend multiplies them. Each activation row is quantized to 8-bit blocks; each pair of
//! blocks gives eight integer partial sums (four weights each) that are scaled and accumulated
//! in eight f32 lanes, and the lanes are added in ggml's fixed order. Following that arithmetic
//! step for step makes every product equal llama.cpp's bit for bit — the only way to get its
//! greedy output on near-ties — and the kernel reads one byte per weight instead of four.
//!
//! The products are also row-independent (no result depends on the other rows of a step), so
//! a request's output does not depend on what it is batched with.

use candle_core::quantized::GgmlDType;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

/// A weight matrix (rows × cols) of one of the 32-weight block formats, unpacked to one signed
/// byte per weight so that every format runs through the same kernel.
#[derive(Debug, Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    /// Row-major, blocks of 32 along each row.
    values: Vec<i8>,
    /// One per block.
    scales: Vec<f32>,
    /// One per block; zero for the formats without a minimum (their products ignore it exactly:
    /// `fma(0, s, acc)` is `acc`).
    mins: Vec<f32>,
}

/// The formats this module runs, and their block size in bytes.
fn block_bytes(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q4_0 => Some(18),
        GgmlDType::Q4_1 => Some(20),
        GgmlDType::Q5_0 => Some(22),
        GgmlDType::Q5_1 => Some(24),
        GgmlDType::Q8_0 => Some(34),
        _ => None,
    }
}

pub fn supports(dtype: GgmlDType) -> bool {
    block_bytes(dtype).is_some()
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Weight `j` of a 4-bit block is the low nibble of byte `j` for `j < 16`, else the high nibble
/// of byte `j - 16`; 5-bit formats add bit `j` of `qh` as the fifth bit.
fn unpack(dtype: GgmlDType, b: &[u8], out: &mut [i8]) -> (f32, f32) {
    let nibble = |qs: &[u8], j: usize| if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 };
    let fifth = |qh: u32, j: usize| (((qh >> j) & 1) as u8) << 4;
    let qh_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    match dtype {
        GgmlDType::Q4_0 => {
            (0..QK).for_each(|j| out[j] = nibble(&b[2..18], j) as i8 - 8);
            (half_at(b, 0), 0.0)
        }
        GgmlDType::Q4_1 => {
            (0..QK).for_each(|j| out[j] = nibble(&b[4..20], j) as i8);
            (half_at(b, 0), half_at(b, 2))
        }
        GgmlDType::Q5_0 => {
            let qh = qh_at(2);
            (0..QK).for_each(|j| out[j] = (nibble(&b[6..22], j) | fifth(qh, j)) as i8 - 16);
            (half_at(b, 0), 0.0)
        }
        GgmlDType::Q5_1 => {
            let qh = qh_at(4);
            (0..QK).for_each(|j| out[j] = (nibble(&b[8..24], j) | fifth(qh, j)) as i8);
            (half_at(b, 0), half_at(b, 2))
        }
        _ => {
            (0..QK).for_each(|j| out[j] = b[2 + j] as i8);
            (half_at(b, 0), 0.0)
        }
    }
}

impl QMatrix {
    /// The matrix from a GGUF tensor's bytes; `None` for a format this module does not run or
    /// a shape or size that does not fit it.
    pub fn from_blocks(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        let size = block_bytes(dtype)?;
        if cols == 0 || !cols.is_multiple_of(QK) || bytes.len() != rows * cols / QK * size {
            return None;
        }
        let blocks = rows * cols / QK;
        let mut values = vec![0i8; rows * cols];
        let (mut scales, mut mins) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for (b, out) in bytes.chunks_exact(size).zip(values.chunks_exact_mut(QK)) {
            let (d, m) = unpack(dtype, b, out);
            scales.push(d);
            mins.push(m);
        }
        Some(QMatrix { rows, cols, values, scales, mins })
    }

    /// Stacks matrices with the same width (Q, K and V into one projection).
    pub fn concat(parts: &[QMatrix]) -> Option<Self> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        Some(QMatrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            values: parts.iter().flat_map(|p| p.values.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
            mins: parts.iter().flat_map(|p| p.mins.iter().copied()).collect(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r` in f32, as ggml dequantizes it (`q·d + m`, fused).
    pub fn row_f32(&self, r: usize, out: &mut Vec<f32>) {
        let blocks = self.cols / QK;
        let values = &self.values[r * self.cols..(r + 1) * self.cols];
        for (b, chunk) in values.chunks_exact(QK).enumerate() {
            let (d, m) = (self.scales[r * blocks + b], self.mins[r * blocks + b]);
            out.extend(chunk.iter().map(|&q| (q as f32).mul_add(d, m)));
        }
    }

    /// `x` (m × cols, row-major) times this matrix transposed: (m × rows).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let acts = QActs::new(x, m, self.cols);
        // Each task owns a run of weight rows and writes them transposed (weight row-major),
        // so tasks write disjoint slices; the transpose back is cheap next to the products.
        let tasks = rayon::current_num_threads() * 4;
        let chunk = self.rows.div_ceil(tasks).next_multiple_of(8).max(8);
        let mut out_t = vec![0f32; self.rows * m];
        let kernel = Kernel::detect();
        out_t.par_chunks_mut(chunk * m).enumerate().for_each(|(c, out)| {
            let first = c * chunk;
            let n = out.len() / m;
            // Four activation rows at a time against a tile of weight rows that stays in L1.
            for a0 in (0..m).step_by(4) {
                let group = (m - a0).min(4);
                for w in first..first + n {
                    let dst = &mut out[(w - first) * m + a0..][..group];
                    match group {
                        4 => dst.copy_from_slice(&kernel.dot::<4>(self, w, &acts, a0)),
                        3 => dst.copy_from_slice(&kernel.dot::<3>(self, w, &acts, a0)),
                        2 => dst.copy_from_slice(&kernel.dot::<2>(self, w, &acts, a0)),
                        _ => dst.copy_from_slice(&kernel.dot::<1>(self, w, &acts, a0)),
                    }
                }
            }
        });
        let mut out = vec![0f32; m * self.rows];
        for (w, col) in out_t.chunks_exact(m).enumerate() {
            for (a, &v) in col.iter().enumerate() {
                out[a * self.rows + w] = v;
            }
        }
        out
    }
}

/// Activation rows quantized as ggml's AVX2 `quantize_row_q8_1` does (`q8_0` gives the same
/// integers and scale): `d = max|x|/127` kept as f16, integers from `x·(127/max)` rounded half
/// to even, and `s = d·Σq` kept as f16 for the formats with a minimum.
pub struct QActs {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    cols: usize,
}

impl QActs {
    pub fn new(x: &[f32], m: usize, cols: usize) -> Self {
        let blocks = m * cols / QK;
        let mut q = vec![0i8; m * cols];
        let mut d = vec![0f32; blocks];
        let mut s = vec![0f32; blocks];
        q.par_chunks_mut(QK)
            .zip(d.par_iter_mut().zip(s.par_iter_mut()))
            .zip(x[..m * cols].par_chunks(QK))
            .for_each(|((q, (d, s)), x)| {
                let max = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let scale = max / 127.0;
                let inv = if max != 0.0 { 127.0 / max } else { 0.0 };
                let mut sum = 0i32;
                for (q, &v) in q.iter_mut().zip(x) {
                    let r = (v * inv).round_ties_even() as i32;
                    *q = r.clamp(-128, 127) as i8;
                    sum += r;
                }
                *d = f16::from_f32(scale).to_f32();
                *s = f16::from_f32(scale * sum as f32).to_f32();
            });
        QActs { q, d, s, cols }
    }
}

/// The eight lanes added as ggml's `hsum_float_8` adds them.
#[inline]
fn hsum8(a: [f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (r[0] + r[2]) + (r[1] + r[3])
}

#[derive(Clone, Copy)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Weight row `w` against activation rows `a0..a0 + N`.
    #[inline]
    fn dot<const N: usize>(self, m: &QMatrix, w: usize, acts: &QActs, a0: usize) -> [f32; N] {
        match self {
            Kernel::Portable => dot_portable::<N>(m, w, acts, a0),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => simd::dot_avx2::<N>(m, w, acts, a0),
        }
    }
}

/// The reference: the same lanes and the same order of float operations as the SIMD kernel.
fn dot_portable<const N: usize>(m: &QMatrix, w: usize, acts: &QActs, a0: usize) -> [f32; N] {
    let blocks = m.cols / QK;
    let wv = &m.values[w * m.cols..(w + 1) * m.cols];
    let (wd, wm) = (&m.scales[w * blocks..][..blocks], &m.mins[w * blocks..][..blocks]);
    let mut acc = [[0f32; 8]; N];
    let mut summs = [0f32; N];
    for b in 0..blocks {
        let wb = &wv[b * QK..][..QK];
        for r in 0..N {
            let row = a0 + r;
            let ab = &acts.q[row * acts.cols + b * QK..][..QK];
            let ib = row * blocks + b;
            summs[r] = wm[b].mul_add(acts.s[ib], summs[r]);
            let dd = wd[b] * acts.d[ib];
            for (l, acc) in acc[r].iter_mut().enumerate() {
                let sum: i32 = (4 * l..4 * l + 4).map(|k| wb[k] as i32 * ab[k] as i32).sum();
                *acc = dd.mul_add(sum as f32, *acc);
            }
        }
    }
    std::array::from_fn(|r| hsum8(acc[r]) + summs[r])
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    use super::{QActs, QK, QMatrix, hsum8};

    pub(super) fn dot_avx2<const N: usize>(m: &QMatrix, w: usize, acts: &QActs, a0: usize) -> [f32; N] {
        let blocks = m.cols / QK;
        assert!((w + 1) * m.cols <= m.values.len() && (a0 + N) * acts.cols <= acts.q.len());
        // SAFETY: `Kernel::detect` chose this kernel only after seeing AVX2 and FMA, and the
        // assertion above keeps every load inside the weight row and the activation rows.
        unsafe { dot_rows::<N>(m, w, acts, a0, blocks) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows<const N: usize>(
        m: &QMatrix,
        w: usize,
        acts: &QActs,
        a0: usize,
        blocks: usize,
    ) -> [f32; N] {
        // SAFETY: the caller checked that the weight row and activation rows are in bounds.
        let wp = unsafe { m.values.as_ptr().add(w * m.cols) };
        let (wd, wm) = (&m.scales[w * blocks..][..blocks], &m.mins[w * blocks..][..blocks]);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut summs = [0f32; N];
        for b in 0..blocks {
            // SAFETY (all loads): block `b` of the row and rows `a0..a0 + N` are in bounds.
            let wv = unsafe { _mm256_loadu_si256(wp.add(b * QK).cast()) };
            // ggml's sign trick: |w| as unsigned bytes times a with w's sign, so maddubs
            // (unsigned × signed) gives the signed products; pairs never exceed i16.
            let aw = _mm256_sign_epi8(wv, wv);
            for r in 0..N {
                let row = a0 + r;
                let ib = row * blocks + b;
                let av = unsafe { _mm256_loadu_si256(acts.q.as_ptr().add(row * acts.cols + b * QK).cast()) };
                let pairs = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(av, wv));
                let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                let dd = _mm256_set1_ps(wd[b] * acts.d[ib]);
                acc[r] = _mm256_fmadd_ps(dd, lanes, acc[r]);
                summs[r] = wm[b].mul_add(acts.s[ib], summs[r]);
            }
        }
        std::array::from_fn(|r| {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds the eight floats stored.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]) };
            hsum8(lanes) + summs[r]
        })
    }
}

/// `x · Wᵀ` as a candle op over a contiguous (rows, cols) f32 input on the CPU.
pub struct QMatMul<'a>(pub &'a QMatrix);

impl CustomOp1 for QMatMul<'_> {
    fn name(&self) -> &'static str {
        "barge-quantized-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = storage.as_slice::<f32>()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("a quantized matmul needs a contiguous input");
        };
        let (m, cols) = layout.shape().dims2()?;
        if cols != self.0.cols {
            candle_core::bail!("a quantized matmul got {cols} features, the weight has {}", self.0.cols);
        }
        let out = self.0.matmul(&data[start..end], m);
        Ok((CpuStorage::F32(out), Shape::from((m, self.0.rows))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Random blocks of `dtype` (scales in f16, values of every bit pattern).
    fn random_blocks(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let size = block_bytes(dtype).expect("a supported type");
        let raw = noise(rows * cols / QK * size, seed);
        let mut bytes: Vec<u8> = raw.iter().map(|v| ((v + 1.0) * 128.0) as u8).collect();
        for (i, block) in bytes.chunks_exact_mut(size).enumerate() {
            let d = f16::from_f32(0.01 + 0.001 * (i % 7) as f32).to_le_bytes();
            block[..2].copy_from_slice(&d);
            if matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1) {
                block[2..4].copy_from_slice(&f16::from_f32(-0.05).to_le_bytes());
            }
        }
        bytes
    }

    #[test]
    fn products_match_the_dequantized_weights_within_the_activation_rounding() {
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0] {
            let (rows, cols, m) = (13, 96, 6);
            let w = QMatrix::from_blocks(dtype, rows, cols, &random_blocks(dtype, rows, cols, 7))
                .expect("blocks");
            let x = noise(m * cols, 3);
            let got = w.matmul(&x, m);
            for a in 0..m {
                for r in 0..rows {
                    let mut row = Vec::new();
                    w.row_f32(r, &mut row);
                    let exact: f32 = row.iter().zip(&x[a * cols..]).map(|(w, x)| w * x).sum();
                    let bound: f32 = row.iter().map(|w| w.abs()).sum::<f32>() * (1.0 / 127.0);
                    let diff = (got[a * rows + r] - exact).abs();
                    assert!(diff <= bound, "{dtype:?} ({a},{r}): {} vs {exact}", got[a * rows + r]);
                }
            }
        }
    }

    #[test]
    fn the_simd_kernel_equals_the_portable_one_bit_for_bit() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            let (rows, cols, m) = (9, 256, 7);
            let w = QMatrix::from_blocks(dtype, rows, cols, &random_blocks(dtype, rows, cols, 11))
                .expect("blocks");
            let acts = QActs::new(&noise(m * cols, 5), m, cols);
            for r in 0..rows {
                for a in 0..m {
                    let want = dot_portable::<1>(&w, r, &acts, a)[0];
                    assert_eq!(Kernel::detect().dot::<1>(&w, r, &acts, a)[0].to_bits(), want.to_bits());
                }
                let four = Kernel::detect().dot::<4>(&w, r, &acts, 2);
                for (i, v) in four.iter().enumerate() {
                    assert_eq!(v.to_bits(), dot_portable::<1>(&w, r, &acts, 2 + i)[0].to_bits());
                }
            }
        }
    }

    #[test]
    fn an_unsupported_format_or_a_short_buffer_is_refused() {
        assert!(QMatrix::from_blocks(GgmlDType::Q4K, 1, 256, &[0; 144]).is_none());
        assert!(QMatrix::from_blocks(GgmlDType::Q8_0, 2, 32, &[0; 34]).is_none());
        assert!(QMatrix::from_blocks(GgmlDType::Q8_0, 1, 33, &[0; 34]).is_none());
    }
}
