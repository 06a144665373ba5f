//! The one routine Barge takes from OpenBLAS (Debian's `libopenblas-dev`): single-precision
//! GEMM, which runs BERT's Linear layers about twice as fast as candle's own CPU kernel on
//! MiniLM's shapes (see docs/benchmarks.md).
#![allow(unsafe_code)]

use std::sync::Once;

use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, cblas_sgemm};

unsafe extern "C" {
    fn openblas_set_num_threads(n: std::ffi::c_int);
}

/// OpenBLAS's own thread pool would fight candle's and rayon's for the same cores (a tenth of
/// the time went to the scheduler); callers split GEMMs by rows across rayon instead.
fn single_threaded() {
    static ONCE: Once = Once::new();
    // SAFETY: a plain setter of OpenBLAS's global thread count, called once before any GEMM.
    ONCE.call_once(|| unsafe { openblas_set_num_threads(1) });
}

/// `out (m×n) = a (m×k) · bᵀ`, where `b` is `n×k`; everything row-major and contiguous.
pub fn sgemm_nt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && out.len() >= m * n,
        "sgemm_nt got slices smaller than {m}x{k}·({n}x{k})ᵀ — this is a bug"
    );
    single_threaded();
    let (Ok(mi), Ok(ni), Ok(ki)) = (i32::try_from(m), i32::try_from(n), i32::try_from(k)) else {
        panic!("sgemm_nt dimensions {m}x{n}x{k} exceed i32 — this is a bug");
    };
    // SAFETY: the assert above keeps every element OpenBLAS reads or writes inside the three
    // slices (leading dimensions equal the row lengths), and OpenBLAS keeps no pointer after
    // returning.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasRowMajor,
            CBLAS_TRANSPOSE::CblasNoTrans,
            CBLAS_TRANSPOSE::CblasTrans,
            mi,
            ni,
            ki,
            1.0,
            a.as_ptr(),
            ki,
            b.as_ptr(),
            ki,
            0.0,
            out.as_mut_ptr(),
            ni,
        );
    }
}

/// General row-major `c = a·b` (with `a` or `b` transposed when asked) over strided
/// sub-matrices: `lda`, `ldb`, `ldc` are the row strides of the buffers the slices start in.
#[allow(clippy::too_many_arguments)] // BLAS's own shape, kept whole so call sites read like it
pub fn sgemm_strided(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    b_transposed: bool,
    c: &mut [f32],
    ldc: usize,
) {
    // The last element each operand reaches, so OpenBLAS never leaves the slices.
    let last_b = if b_transposed { (n - 1) * ldb + k } else { (k - 1) * ldb + n };
    assert!(
        m > 0
            && n > 0
            && k > 0
            && a.len() >= (m - 1) * lda + k
            && b.len() >= last_b
            && c.len() >= (m - 1) * ldc + n,
        "sgemm_strided got slices smaller than its {m}x{n}x{k} shape — this is a bug"
    );
    assert!(
        lda >= k && ldc >= n && ldb >= if b_transposed { k } else { n },
        "bad leading dimensions — this is a bug"
    );
    single_threaded();
    let as_i32 = |v: usize| {
        i32::try_from(v).unwrap_or_else(|_| panic!("BLAS dimension {v} exceeds i32 — this is a bug"))
    };
    let trans_b = if b_transposed { CBLAS_TRANSPOSE::CblasTrans } else { CBLAS_TRANSPOSE::CblasNoTrans };
    // SAFETY: the asserts above keep every element read or written inside the three slices for
    // these shapes and strides; OpenBLAS keeps no pointer after returning.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasRowMajor,
            CBLAS_TRANSPOSE::CblasNoTrans,
            trans_b,
            as_i32(m),
            as_i32(n),
            as_i32(k),
            1.0,
            a.as_ptr(),
            as_i32(lda),
            b.as_ptr(),
            as_i32(ldb),
            0.0,
            c.as_mut_ptr(),
            as_i32(ldc),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product() {
        let (m, n, k) = (3, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32).sin()).collect();
        let mut out = vec![0.0; m * n];
        sgemm_nt(m, n, k, &a, &b, &mut out);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                assert!((out[i * n + j] - want).abs() < 1e-4, "({i},{j}) {} vs {want}", out[i * n + j]);
            }
        }
    }
}
