//! Runtime choice of CPU instructions for the decoder's scalar kernels. The runner is built for
//! the x86-64 baseline, where `f32::mul_add` is a library call and rounding to an integer is
//! too; the kernels that follow ggml's fused arithmetic run many of those per token, so each
//! has a variant compiled with AVX2 and FMA (`#[cfg_attr(..., target_feature)]`) and
//! [`fast!`] picks it when this CPU has them. Both compute the same bits.

use std::sync::OnceLock;

/// Whether this CPU has AVX2 and FMA (checked once).
pub fn has_fma() -> bool {
    static FMA: OnceLock<bool> = OnceLock::new();
    *FMA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `fast!(with_fma, plain)`: the first expression (a call of an AVX2+FMA variant) where the
/// CPU has those instructions, else the second.
macro_rules! fast {
    ($fast:expr, $plain:expr) => {
        if $crate::decoder::cpu::has_fma() {
            // SAFETY: has_fma() saw AVX2 and FMA on this CPU, all the variant needs.
            #[allow(unsafe_code, unused_unsafe)]
            unsafe {
                $fast
            }
        } else {
            $plain
        }
    };
}
pub(crate) use fast;
