//! Adam with saveable state, and Polyak averaging of target networks.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Tensor};

/// Adam hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// Learning rate (paper: 3e-4).
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled (AdamW) weight decay; 0 disables it.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 3e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: None }
    }
}

/// Adam over the trainable variables of one [`VarStore`].
///
/// Unlike tch's optimiser, its moments and step count can be saved and restored, so a
/// resumed run continues bit for bit ([`Adam::state`], [`Adam::load_state`]).
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl Adam {
    /// Optimises every trainable variable of `vs` (in name order).
    pub fn new(vs: &VarStore, config: AdamConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<_>, Vec<_>) = vars.into_iter().unzip();
        let m = params.iter().map(|p| p.zeros_like()).collect();
        let v = params.iter().map(|p| p.zeros_like()).collect();
        Self { config, names, params, m, v, step: 0 }
    }

    /// Number of updates applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Changes the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Clears the gradients of all parameters.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// `zero_grad`, backward of `loss`, `step`. Returns the gradient norm when clipping is on.
    pub fn backward_step(&mut self, loss: &Tensor) -> Option<f64> {
        self.zero_grad();
        loss.backward();
        self.step()
    }

    /// Applies one update from the current gradients. Parameters without a gradient are
    /// left untouched. Returns the global gradient norm before clipping, when clipping is on.
    pub fn step(&mut self) -> Option<f64> {
        let c = &self.config;
        self.step += 1;
        let t = self.step as f64;
        let bc1 = 1.0 - c.beta1.powf(t);
        let bc2 = 1.0 - c.beta2.powf(t);
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).collect();
            let norm = c.max_grad_norm.map(|max| {
                let sq: Vec<Tensor> = grads.iter().filter(|g| g.defined()).map(|g| g.square().sum(g.kind())).collect();
                let norm = Tensor::stack(&sq, 0).sum(sq[0].kind()).sqrt().double_value(&[]);
                (norm, (max / (norm + 1e-6)).min(1.0))
            });
            for (i, g) in grads.iter().enumerate() {
                if !g.defined() {
                    continue;
                }
                let g = match norm {
                    Some((_, scale)) if scale < 1.0 => g * scale,
                    _ => g.shallow_clone(),
                };
                let _ = self.m[i].lerp_(&g, 1.0 - c.beta1);
                let _ = self.v[i].lerp_(&g.square(), 1.0 - c.beta2);
                let denom = (&self.v[i] / bc2).sqrt() + c.eps;
                let p = &mut self.params[i];
                if c.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
                }
                let _ = p.g_add_(&(&self.m[i] / denom * (-c.lr / bc1)));
            }
            norm.map(|(n, _)| n)
        })
    }

    /// The optimiser state as named tensors (`{prefix}m/{name}`, `{prefix}v/{name}`) and the
    /// step count, for a checkpoint.
    pub fn state(&self, prefix: &str) -> (Vec<(String, Tensor)>, u64) {
        let mut out = Vec::with_capacity(2 * self.names.len());
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("{prefix}m/{n}"), self.m[i].shallow_clone()));
            out.push((format!("{prefix}v/{n}"), self.v[i].shallow_clone()));
        }
        (out, self.step)
    }

    /// Restores the state written by [`Adam::state`]; every moment must be present with the
    /// parameter's shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, prefix: &str, step: u64) -> Result<()> {
        for (i, n) in self.names.iter().enumerate() {
            for (kind, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}{kind}/{n}");
                let src = tensors.get(&key).with_context(|| format!("checkpoint has no optimiser tensor '{key}'"))?;
                copy_checked(dst, src, &key)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Copies `src` into `dst` in place, refusing a shape mismatch.
pub(crate) fn copy_checked(dst: &mut Tensor, src: &Tensor, name: &str) -> Result<()> {
    if dst.size() != src.size() {
        bail!("tensor '{name}': checkpoint has shape {:?}, model expects {:?}", src.size(), dst.size());
    }
    tch::no_grad(|| dst.copy_(src));
    Ok(())
}

/// Polyak averaging `target ← (1 − τ)·target + τ·online` over variables with equal names.
pub fn polyak_update(target: &VarStore, online: &VarStore, tau: f64) {
    let src = online.variables();
    tch::no_grad(|| {
        for (name, mut t) in target.variables() {
            let s = src.get(&name).unwrap_or_else(|| panic!("online network has no variable '{name}'"));
            let _ = t.lerp_(s, tau);
        }
    });
}
