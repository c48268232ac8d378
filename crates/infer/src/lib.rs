//! Fast CPU inference for trained policies, without libtorch: the acting path of a deployed
//! MVP (or QC) agent.
//!
//! The training crates convert their networks into plain weights ([`MlpWeights`],
//! [`PolicyWeights`]); this crate packs them once for a [`Precision`] and runs
//! generate-and-select with hand-written kernels, one family per instruction set ([`Isa`]):
//! AVX-512 fp32 FMA, and bf16 with fp32 accumulation on AMX tiles (Intel Sapphire Rapids and
//! later) or AVX512-BF16 dot products; AVX2 + FMA fp32 (Intel since Haswell, AMD since Zen);
//! and a portable fp32 path of plain loops (every other CPU, ARM included: it holds no
//! x86-only code). Each layer keeps the family it was built with — the best the CPU runs,
//! capped process-wide by [`Isa::set_cap`] (`engine.isa`) or chosen per object with
//! `with_isa` — so every family can be tested and measured on a CPU that runs a better one.
//! All scratch memory is owned by the policy and sized on the first call, so acting afterwards
//! performs no heap allocation (tested). One thread; the kernels are sized for the policy
//! shapes (tens to thousands of rows × 512).
//!
//! The same kernels also run the forward and backward passes of an MLP ([`MlpGrad`]): the
//! training code updates its critic and actor with them on the CPU.
//!
//! A trained policy leaves a run as a folder ([`PolicyFile`]: `policy.safetensors` +
//! `policy.json`, written by `mvp export`) that this crate loads and acts with.
//!
//! Of the workspace it depends only on `mvp-spec` (the types it shares with the training
//! crates: [`Activation`], [`ActorKind`]); beyond it on `rand`/`rand_distr` (the sampling
//! noise), `libc` (the AMX permission request), `safetensors`/`serde`/`serde_json` (the policy
//! folder) and `thiserror` — never on libtorch.
#![warn(missing_docs)]

mod amx;
mod backprop;
mod file;
mod gemm;
mod isa;
mod mlp;
mod policy;

pub use backprop::{LayerGrads, LayerParams, MlpGrad};
pub use file::{
    ActorSpec, CriticSpec, LayerSpec, NetworkSpec, PolicyFile, PolicyFileError, PolicySpec, Preprocessing, FORMAT,
    FORMAT_V1, MAX_SAMPLES, MAX_STEPS, SPEC_FILE, WEIGHTS_FILE,
};
pub use gemm::{from_bf16, has_avx512_bf16, to_bf16, PackedLinear, Precision};
pub use isa::Isa;
pub use mlp::{Activation, LayerWeights, Mlp, MlpWeights};
pub use policy::{ActorKind, Aggregate, InferError, NativePolicy, PolicyWeights};
