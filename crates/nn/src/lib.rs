//! Tensor building blocks on tch for the mvp framework.
//!
//! Everything above this crate (actors, critics, the agent) builds its networks from these
//! pieces: [`Mlp`] and its batched sibling [`EnsembleMlp`], [`TimeFeatures`] for flow times,
//! exact Jacobian-vector products ([`ForwardJvp`], [`jvp_autograd`]), an [`Adam`] whose
//! state can be saved, [`polyak_update`], atomic [`checkpoint`]s, and the [`Runtime`]
//! settings (device, thread count, [`MatmulPrecision`]).
//!
//! Of the workspace it depends only on `mvp-spec` (the types it shares with the native engine:
//! [`Activation`]); beyond it on tch (and torch-sys for the thread settings), `serde`,
//! `serde_json`, `anyhow` and `thiserror` — not on the native engine, which the agent exports
//! into.
#![warn(missing_docs)]

mod adam;
pub mod checkpoint;
mod ensemble;
mod jvp;
mod mlp;
mod precision;
mod runtime;
mod time;

pub use adam::{polyak_update, Adam, AdamConfig};
pub use ensemble::EnsembleMlp;
pub use jvp::{jvp_autograd, ForwardJvp};
pub use mlp::{Activation, ActivationExt, Layer, Mlp, MlpConfig};
pub use precision::MatmulPrecision;
pub use runtime::{DeviceChoice, Runtime};
pub use time::TimeFeatures;
