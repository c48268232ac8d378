//! The number format of the networks' matrix products: fp32, or bf16 with fp32 master weights.
//!
//! With [`MatmulPrecision::Bf16`], every matrix product of [`crate::Mlp`] and
//! [`crate::EnsembleMlp`] (forward, forward-mode tangents and, through autograd, their
//! backward) casts its two operands to bfloat16 and its result back to the input's kind.
//! Parameters, biases, activations, LayerNorm, losses and Adam stay in fp32, so this is the
//! mixed-precision recipe of CUDA autocast (which tch only offers on CUDA) applied by hand to
//! the one op that dominates the cost. On CPUs with AMX or AVX512-BF16, libtorch's bf16 GEMM
//! runs several times faster than fp32 at training batch sizes.
//!
//! The setting is per thread (like autocast), so that tests running side by side in one
//! process do not change each other's numerics; [`crate::Runtime::apply`] sets it for the
//! calling thread.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Number format of matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MatmulPrecision {
    /// fp32 operands and accumulation.
    #[default]
    F32,
    /// bf16 operands, fp32 accumulation (libtorch's bf16 GEMM), fp32 weights kept for Adam.
    Bf16,
}

impl FromStr for MatmulPrecision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" | "fp32" => MatmulPrecision::F32,
            "bf16" => MatmulPrecision::Bf16,
            s => bail!("unknown matmul precision '{s}': expected f32 or bf16"),
        })
    }
}

impl TryFrom<String> for MatmulPrecision {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<MatmulPrecision> for String {
    fn from(p: MatmulPrecision) -> String {
        p.to_string()
    }
}

impl fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatmulPrecision::F32 => "f32",
            MatmulPrecision::Bf16 => "bf16",
        })
    }
}

thread_local! {
    static CURRENT: Cell<MatmulPrecision> = const { Cell::new(MatmulPrecision::F32) };
}

impl MatmulPrecision {
    /// The precision in force on this thread.
    pub fn current() -> Self {
        CURRENT.with(Cell::get)
    }

    /// Sets the precision for this thread from now on.
    pub fn set(self) {
        CURRENT.with(|c| c.set(self));
    }

    /// Runs `f` with this precision on this thread, then restores the previous one.
    pub fn scope<T>(self, f: impl FnOnce() -> T) -> T {
        let prev = Self::current();
        self.set();
        struct Restore(MatmulPrecision);
        impl Drop for Restore {
            fn drop(&mut self) {
                self.0.set();
            }
        }
        let _restore = Restore(prev);
        f()
    }
}

/// `x · w` in the current precision; the result has `x`'s kind.
pub(crate) fn matmul(x: &Tensor, w: &Tensor) -> Tensor {
    match MatmulPrecision::current() {
        MatmulPrecision::F32 => x.matmul(w),
        MatmulPrecision::Bf16 => x.to_kind(Kind::BFloat16).matmul(&w.to_kind(Kind::BFloat16)).to_kind(x.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_allowed_values() {
        assert_eq!("bf16".parse::<MatmulPrecision>().unwrap(), MatmulPrecision::Bf16);
        assert_eq!("f32".parse::<MatmulPrecision>().unwrap(), MatmulPrecision::F32);
        let e = "fp16".parse::<MatmulPrecision>().unwrap_err().to_string();
        assert!(e.contains("'fp16'") && e.contains("f32 or bf16"), "{e}");
    }

    #[test]
    fn scope_restores_the_previous_precision_and_rounds_operands() {
        let x = Tensor::from_slice(&[1.0f32 + 1.0 / 1024.0]).reshape([1, 1]);
        let w = Tensor::from_slice(&[1.0f32]).reshape([1, 1]);
        let exact = matmul(&x, &w).double_value(&[0, 0]);
        let rounded = MatmulPrecision::Bf16.scope(|| {
            assert_eq!(MatmulPrecision::current(), MatmulPrecision::Bf16);
            matmul(&x, &w)
        });
        assert_eq!(MatmulPrecision::current(), MatmulPrecision::F32);
        assert_eq!(rounded.kind(), Kind::Float);
        // bf16 keeps 8 significant bits: 1 + 2^-10 rounds to 1.
        assert_eq!(exact, 1.0 + 1.0 / 1024.0);
        assert_eq!(rounded.double_value(&[0, 0]), 1.0);
    }
}
