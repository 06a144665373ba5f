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

use super::cpu::fast;

const QK: usize = 32;

/// A weight matrix (rows × cols) of one of the 32-weight block formats, unpacked to one signed
/// byte per weight so that every format runs through the same kernel. Rows are stored in
/// pairs, block by block (row 2p's block b, then row 2p+1's), so the AVX-512 kernel multiplies
/// two rows with one instruction; an odd count gets a zero row.
#[derive(Debug, Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    blocks: usize,
    values: Vec<i8>,
    /// One per block, paired like the values.
    scales: Vec<f32>,
    /// One per block; zero for the formats without a minimum (their products ignore it exactly:
    /// `fma(0, s, acc)` is `acc`).
    mins: Vec<f32>,
    /// No negative weight (Q4_1, Q5_1): the VNNI kernel takes them as unsigned bytes directly.
    unsigned: bool,
    has_mins: bool,
}

/// [`QMatrix`] rows as read from the file, before pairing (so projections can be stacked).
#[derive(Debug, Clone)]
pub struct QRows {
    rows: usize,
    cols: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
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

impl QRows {
    /// The rows of a GGUF tensor's bytes; `None` for a format this module does not run or a
    /// shape or size that does not fit it.
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
        Some(QRows { rows, cols, values, scales, mins })
    }

    /// Stacks row sets with the same width (Q, K and V into one projection).
    pub fn concat(parts: &[QRows]) -> Option<Self> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        Some(QRows {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            values: parts.iter().flat_map(|p| p.values.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
            mins: parts.iter().flat_map(|p| p.mins.iter().copied()).collect(),
        })
    }

    /// The rows paired for the kernels.
    pub fn pack(self) -> QMatrix {
        let blocks = self.cols / QK;
        let pairs = self.rows.div_ceil(2);
        let mut values = vec![0i8; pairs * 2 * self.cols];
        let mut scales = vec![0f32; pairs * 2 * blocks];
        let mut mins = vec![0f32; pairs * 2 * blocks];
        for r in 0..self.rows {
            for b in 0..blocks {
                let at = slot(r, b, blocks);
                values[at * QK..(at + 1) * QK].copy_from_slice(&self.values[(r * blocks + b) * QK..][..QK]);
                scales[at] = self.scales[r * blocks + b];
                mins[at] = self.mins[r * blocks + b];
            }
        }
        QMatrix {
            rows: self.rows,
            cols: self.cols,
            blocks,
            unsigned: self.values.iter().all(|&v| v >= 0),
            has_mins: self.mins.iter().any(|&m| m != 0.0),
            values,
            scales,
            mins,
        }
    }
}

/// Where row `r`'s block `b` sits in the paired layout (in blocks).
#[inline]
fn slot(r: usize, b: usize, blocks: usize) -> usize {
    ((r / 2) * blocks + b) * 2 + r % 2
}

impl QMatrix {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    #[inline]
    fn block(&self, r: usize, b: usize) -> (&[i8], f32, f32) {
        let at = slot(r, b, self.blocks);
        (&self.values[at * QK..(at + 1) * QK], self.scales[at], self.mins[at])
    }

    /// Row `r` in f32, as ggml dequantizes it (`q·d + m`, fused).
    pub fn row_f32(&self, r: usize, out: &mut Vec<f32>) {
        for b in 0..self.blocks {
            let (values, d, m) = self.block(r, b);
            out.extend(values.iter().map(|&q| (q as f32).mul_add(d, m)));
        }
    }

    /// `x` (m × cols, row-major) times this matrix transposed: (m × rows).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(Kernel::detect(), x, m)
    }

    fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Vec<f32> {
        let acts = QActs::new(x, m, self.cols, kernel.needs_lane_sums(self));
        // Each task owns a run of weight-row pairs and writes them transposed (weight
        // row-major), so tasks write disjoint slices; the transpose back is cheap next to the
        // products.
        let pairs = self.rows.div_ceil(2);
        let tasks = rayon::current_num_threads() * 4;
        let chunk = pairs.div_ceil(tasks).next_multiple_of(4).max(4);
        let mut out_t = vec![0f32; pairs * 2 * m];
        out_t.par_chunks_mut(chunk * 2 * m).enumerate().for_each(|(c, out)| {
            let first = c * chunk;
            let n = out.len() / (2 * m);
            kernel.tile_run(self, &acts, first, n, out);
        });
        // Transposed back in 32×32 tiles, so reads and writes both stay in cache lines.
        let mut out = vec![0f32; m * self.rows];
        for w0 in (0..self.rows).step_by(32) {
            for a0 in (0..m).step_by(32) {
                for w in w0..(w0 + 32).min(self.rows) {
                    for a in a0..(a0 + 32).min(m) {
                        out[a * self.rows + w] = out_t[w * m + a];
                    }
                }
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
    /// 128 × the sum of each lane's four integers (8 per block), for the VNNI kernel's
    /// signed weights; empty when not needed.
    lane_sums: Vec<i32>,
    cols: usize,
}

impl QActs {
    pub fn new(x: &[f32], m: usize, cols: usize, lane_sums: bool) -> Self {
        let blocks = m * cols / QK;
        let mut q = vec![0i8; m * cols];
        let mut d = vec![0f32; blocks];
        let mut s = vec![0f32; blocks];
        q.par_chunks_mut(cols)
            .zip(d.par_chunks_mut(cols / QK).zip(s.par_chunks_mut(cols / QK)))
            .zip(x[..m * cols].par_chunks(cols))
            .for_each(|((q, (d, s)), x)| fast!(quantize_row_fma(x, q, d, s), quantize_row(x, q, d, s)));
        let lane_sums = if lane_sums {
            q.chunks_exact(4).map(|l| 128 * l.iter().map(|&v| v as i32).sum::<i32>()).collect()
        } else {
            Vec::new()
        };
        QActs { q, d, s, lane_sums, cols }
    }
}

#[inline(always)]
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (((x, q), d), s) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(d).zip(s) {
        (*d, *s) = quantize_block(x, q);
    }
}

/// One block of activations (up to 32) into `q`, as ggml's AVX2 quantizer does; returns the
/// f16-rounded scale and block sum `(d, s)`. Also the rounding the f32 path applies.
#[inline(always)]
pub(super) fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let max = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = max / 127.0;
    let inv = if max != 0.0 { 127.0 / max } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = (v * inv).round_ties_even() as i32;
        *q = r.clamp(-128, 127) as i8;
        sum += r;
    }
    (f16::from_f32(scale).to_f32(), f16::from_f32(scale * sum as f32).to_f32())
}

#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
fn quantize_row_fma(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    quantize_row(x, q, d, s)
}

/// The eight lanes added as ggml's `hsum_float_8` adds them.
#[inline]
fn hsum8(a: [f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (r[0] + r[2]) + (r[1] + r[3])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                return Kernel::Avx512Vnni;
            }
            if has!("avx2") && has!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    fn needs_lane_sums(self, m: &QMatrix) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx512Vnni {
            return !m.unsigned;
        }
        let _ = m;
        false
    }

    /// Weight-row pairs `first..first + n` against every activation row, into `out`
    /// (weight row-major: `out[(w - 2·first)·m + a]`).
    fn tile_run(self, m: &QMatrix, acts: &QActs, first: usize, n: usize, out: &mut [f32]) {
        let rows = acts.q.len() / acts.cols;
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => simd::run_avx512(m, acts, first, n, out),
            _ => {
                // Four activation rows at a time against weight rows that stay in L1.
                for a0 in (0..rows).step_by(4) {
                    let group = (rows - a0).min(4);
                    for w in 2 * first..2 * (first + n) {
                        let dst = &mut out[(w - 2 * first) * rows + a0..][..group];
                        match group {
                            4 => dst.copy_from_slice(&self.dot::<4>(m, w, acts, a0)),
                            3 => dst.copy_from_slice(&self.dot::<3>(m, w, acts, a0)),
                            2 => dst.copy_from_slice(&self.dot::<2>(m, w, acts, a0)),
                            _ => dst.copy_from_slice(&self.dot::<1>(m, w, acts, a0)),
                        }
                    }
                }
            }
        }
    }

    /// Weight row `w` against activation rows `a0..a0 + N`.
    #[inline]
    fn dot<const N: usize>(self, m: &QMatrix, w: usize, acts: &QActs, a0: usize) -> [f32; N] {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512Vnni => simd::dot_avx2::<N>(m, w, acts, a0),
            Kernel::Portable => dot_portable::<N>(m, w, acts, a0),
        }
    }
}

/// The reference: the same lanes and the same order of float operations as the SIMD kernels.
fn dot_portable<const N: usize>(m: &QMatrix, w: usize, acts: &QActs, a0: usize) -> [f32; N] {
    let blocks = m.blocks;
    let mut acc = [[0f32; 8]; N];
    let mut summs = [0f32; N];
    for b in 0..blocks {
        let (wb, wd, wm) = m.block(w, b);
        for r in 0..N {
            let row = a0 + r;
            let ab = &acts.q[row * acts.cols + b * QK..][..QK];
            let ib = row * blocks + b;
            summs[r] = wm.mul_add(acts.s[ib], summs[r]);
            let dd = wd * acts.d[ib];
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
        assert!((a0 + N) * acts.cols <= acts.q.len());
        // SAFETY: `Kernel::detect` chose this kernel only after seeing AVX2 and FMA; weight
        // blocks come as 32-byte slices, and the assertion keeps activation loads in bounds.
        unsafe { dot_rows::<N>(m, w, acts, a0) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows<const N: usize>(m: &QMatrix, w: usize, acts: &QActs, a0: usize) -> [f32; N] {
        let blocks = m.blocks;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut summs = [0f32; N];
        for b in 0..blocks {
            let (wb, wd, wm) = m.block(w, b);
            // SAFETY (all loads): a block is 32 bytes, and rows `a0..a0 + N` are in bounds.
            let wv = unsafe { _mm256_loadu_si256(wb.as_ptr().cast()) };
            // ggml's sign trick: |w| as unsigned bytes times a with w's sign, so maddubs
            // (unsigned × signed) gives the signed products; pairs never exceed i16.
            let aw = _mm256_sign_epi8(wv, wv);
            for r in 0..N {
                let row = a0 + r;
                let ib = row * blocks + b;
                let av = unsafe { _mm256_loadu_si256(acts.q.as_ptr().add(row * acts.cols + b * QK).cast()) };
                let pairs = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(av, wv));
                let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                let dd = _mm256_set1_ps(wd * acts.d[ib]);
                acc[r] = _mm256_fmadd_ps(dd, lanes, acc[r]);
                summs[r] = wm.mul_add(acts.s[ib], summs[r]);
            }
        }
        std::array::from_fn(|r| {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds the eight floats stored.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]) };
            hsum8(lanes) + summs[r]
        })
    }

    /// Pairs `first..first + n` against every activation row: tiles of two pairs (four
    /// weight rows) by four activation rows.
    pub(super) fn run_avx512(m: &QMatrix, acts: &QActs, first: usize, n: usize, out: &mut [f32]) {
        let rows = acts.q.len() / acts.cols;
        assert!((first + n) * 2 * m.cols <= m.values.len() && out.len() >= n * 2 * rows);
        assert!(m.unsigned || acts.lane_sums.len() == rows * m.blocks * 8);
        for a0 in (0..rows).step_by(4) {
            let na = (rows - a0).min(4);
            for p in (first..first + n).step_by(2) {
                let np = (first + n - p).min(2);
                // SAFETY: `Kernel::detect` chose this kernel only after seeing AVX-512 F, BW and
                // VNNI; the assertions keep pairs `p..p + np` and rows `a0..a0 + na` in bounds.
                let res = unsafe {
                    match (np, na) {
                        (2, 4) => tile::<2, 4>(m, acts, p, a0),
                        (2, 3) => tile::<2, 3>(m, acts, p, a0),
                        (2, 2) => tile::<2, 2>(m, acts, p, a0),
                        (2, _) => tile::<2, 1>(m, acts, p, a0),
                        (_, 4) => tile::<1, 4>(m, acts, p, a0),
                        (_, 3) => tile::<1, 3>(m, acts, p, a0),
                        (_, 2) => tile::<1, 2>(m, acts, p, a0),
                        _ => tile::<1, 1>(m, acts, p, a0),
                    }
                };
                for (r, per_pair) in res.iter().enumerate().take(na) {
                    for (j, halves) in per_pair.iter().enumerate().take(np) {
                        for (h, &v) in halves.iter().enumerate() {
                            out[(2 * (p + j - first) + h) * rows + a0 + r] = v;
                        }
                    }
                }
            }
        }
    }

    /// Two weight rows share a 512-bit register (one per half), so one VNNI instruction gives
    /// both rows' eight lanes for a block; each half then follows ggml's AVX2 arithmetic.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const NP: usize, const NA: usize>(
        m: &QMatrix,
        acts: &QActs,
        p0: usize,
        a0: usize,
    ) -> [[[f32; 2]; 2]; 4] {
        let blocks = m.blocks;
        let halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        // Adding 128 to a byte (mod 256) flips its top bit.
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut acc = [[_mm512_setzero_ps(); NP]; NA];
        let mut summs = [[_mm512_setzero_ps(); NP]; NA];
        for b in 0..blocks {
            let mut wv = [_mm512_setzero_si512(); NP];
            let mut wd = [_mm512_setzero_ps(); NP];
            let mut wm = [_mm512_setzero_ps(); NP];
            for j in 0..NP {
                let at = ((p0 + j) * blocks + b) * 2;
                // SAFETY (all loads): the caller checked the pairs and rows are in bounds.
                let w = unsafe { _mm512_loadu_si512(m.values.as_ptr().add(at * QK).cast()) };
                wv[j] = if m.unsigned { w } else { _mm512_xor_si512(w, flip) };
                let two = |v: &[f32]| unsafe { _mm_castpd_ps(_mm_load_sd(v.as_ptr().add(at).cast())) };
                wd[j] = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(two(&m.scales)));
                if m.has_mins {
                    wm[j] = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(two(&m.mins)));
                }
            }
            for r in 0..NA {
                let row = a0 + r;
                let ib = row * blocks + b;
                let a = unsafe { _mm256_loadu_si256(acts.q.as_ptr().add(row * acts.cols + b * QK).cast()) };
                let av = _mm512_broadcast_i64x4(a);
                let ad = _mm512_set1_ps(acts.d[ib]);
                let corr = if m.unsigned {
                    _mm512_setzero_si512()
                } else {
                    _mm512_broadcast_i64x4(unsafe {
                        _mm256_loadu_si256(acts.lane_sums.as_ptr().add(ib * 8).cast())
                    })
                };
                let s = _mm512_set1_ps(acts.s[ib]);
                for j in 0..NP {
                    // Σ(w+128)·a − 128·Σa = Σw·a, exactly, in each lane of four.
                    let mut lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[j], av);
                    if !m.unsigned {
                        lanes = _mm512_sub_epi32(lanes, corr);
                    }
                    let dd = _mm512_mul_ps(wd[j], ad);
                    acc[r][j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(lanes), acc[r][j]);
                    if m.has_mins {
                        summs[r][j] = _mm512_fmadd_ps(wm[j], s, summs[r][j]);
                    }
                }
            }
        }
        let mut res = [[[0f32; 2]; 2]; 4];
        for r in 0..NA {
            for j in 0..NP {
                let (mut lanes, mut mins) = ([0f32; 16], [0f32; 16]);
                // SAFETY: both arrays hold the sixteen floats stored.
                unsafe {
                    _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r][j]);
                    _mm512_storeu_ps(mins.as_mut_ptr(), summs[r][j]);
                }
                for h in 0..2 {
                    let half: [f32; 8] = std::array::from_fn(|l| lanes[8 * h + l]);
                    res[r][j][h] = hsum8(half) + mins[8 * h];
                }
            }
        }
        res
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
            let w = QRows::from_blocks(dtype, rows, cols, &random_blocks(dtype, rows, cols, 7))
                .expect("blocks")
                .pack();
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

    /// Every kernel this machine can run, the portable reference first.
    fn kernels() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                all.push(Kernel::Avx2);
            }
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                all.push(Kernel::Avx512Vnni);
            }
        }
        all
    }

    #[test]
    fn the_simd_kernels_equal_the_portable_one_bit_for_bit() {
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0] {
            // Odd sizes: a padded row pair and partial tiles of activation rows.
            for (rows, m) in [(9, 7), (4, 8), (1, 1)] {
                let cols = 256;
                let w = QRows::from_blocks(dtype, rows, cols, &random_blocks(dtype, rows, cols, 11))
                    .expect("blocks")
                    .pack();
                let x = noise(m * cols, 5);
                let kernels = kernels();
                let reference: Vec<u32> =
                    w.matmul_with(kernels[0], &x, m).iter().map(|v| v.to_bits()).collect();
                for &k in &kernels[1..] {
                    let got: Vec<u32> = w.matmul_with(k, &x, m).iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, reference, "{k:?} on {dtype:?} {rows}x{cols}, {m} rows");
                }
            }
        }
    }

    #[test]
    fn an_unsupported_format_or_a_short_buffer_is_refused() {
        assert!(QRows::from_blocks(GgmlDType::Q4K, 1, 256, &[0; 144]).is_none());
        assert!(QRows::from_blocks(GgmlDType::Q8_0, 2, 32, &[0; 34]).is_none());
        assert!(QRows::from_blocks(GgmlDType::Q8_0, 1, 33, &[0; 34]).is_none());
    }
}
