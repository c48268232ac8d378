//! Features of flow times (t, t − r, ...) fed to generative actors.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// How each scalar time column is turned into network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[derive(Default)]
pub enum TimeFeatures {
    /// The scalar itself (1 feature per column). The MVP default.
    #[default]
    Raw,
    /// `[t, sin(2π f_k t), cos(2π f_k t)]` for `n` frequencies `f_k` spaced geometrically
    /// from 1 to `max_freq` (1 + 2n features per column).
    Fourier {
        /// Number of frequencies.
        n: usize,
        /// Highest frequency, in cycles per unit time.
        max_freq: f64,
    },
}

impl TimeFeatures {
    /// Features produced per scalar column.
    pub fn dim_per_column(&self) -> usize {
        match self {
            TimeFeatures::Raw => 1,
            TimeFeatures::Fourier { n, .. } => 1 + 2 * n,
        }
    }

    fn omegas(&self, t: &Tensor) -> Option<Tensor> {
        match *self {
            TimeFeatures::Raw => None,
            TimeFeatures::Fourier { n, max_freq } => {
                let f: Vec<f64> = (0..n)
                    .map(|k| if n == 1 { 1.0 } else { max_freq.powf(k as f64 / (n - 1) as f64) })
                    .map(|f| 2.0 * std::f64::consts::PI * f)
                    .collect();
                Some(Tensor::from_slice(&f).to_kind(t.kind()).to_device(t.device()))
            }
        }
    }

    /// Features of `t: [B, c]` as `[B, c · dim_per_column]`.
    pub fn forward(&self, t: &Tensor) -> Tensor {
        match self.omegas(t) {
            None => t.shallow_clone(),
            Some(w) => {
                let (b, _) = t.size2().expect("time features take [B, c]");
                let wt = t.unsqueeze(-1) * &w; // [B, c, n]
                Tensor::cat(&[t.unsqueeze(-1), wt.sin(), wt.cos()], -1).reshape([b, -1])
            }
        }
    }

    /// Features and their tangent along `dt: [B, c]`.
    pub fn forward_jvp(&self, t: &Tensor, dt: &Tensor) -> (Tensor, Tensor) {
        match self.omegas(t) {
            None => (t.shallow_clone(), dt.shallow_clone()),
            Some(w) => {
                let (b, _) = t.size2().expect("time features take [B, c]");
                let wt = t.unsqueeze(-1) * &w;
                let wdt = dt.unsqueeze(-1) * &w;
                let y = Tensor::cat(&[t.unsqueeze(-1), wt.sin(), wt.cos()], -1).reshape([b, -1]);
                let dy = Tensor::cat(&[dt.unsqueeze(-1), wt.cos() * &wdt, -(wt.sin() * &wdt)], -1).reshape([b, -1]);
                (y, dy)
            }
        }
    }
}
