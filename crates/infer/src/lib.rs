//! Fast CPU inference for trained policies, without libtorch: the acting path of a deployed
//! MVP (or QC) agent.
//!
//! The training crates convert their networks into plain weights ([`MlpWeights`],
//! [`PolicyWeights`]); this crate packs them once for a [`Precision`] and runs
//! generate-and-select with hand-written kernels: AVX-512 fp32 FMA; bf16 with fp32 accumulation
//! on AMX tiles (Intel Sapphire Rapids and later) or AVX512-BF16 dot products. All scratch
//! memory is owned by the policy and sized on the first call, so acting afterwards performs no
//! heap allocation (tested). One thread; the kernels are sized for the policy shapes (tens to
//! hundreds of rows × 512).
#![warn(missing_docs)]

pub mod amx;
pub mod gemm;
pub mod mlp;
pub mod policy;

pub use gemm::{has_avx512, has_avx512_bf16, PackedLinear, Precision};
pub use mlp::{Activation, LayerWeights, Mlp, MlpWeights};
pub use policy::{ActorKind, Aggregate, InferError, NativePolicy, PolicyWeights};
