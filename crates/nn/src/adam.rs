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

/// The constants of one Adam step, applied element by element.
struct Elementwise {
    w1: f32,
    w2: f32,
    bc2: f32,
    eps: f32,
    step: f32,
    grad_scale: f32,
}

impl Elementwise {
    fn new(c: &AdamConfig, bc1: f64, bc2: f64, grad_scale: f64) -> Self {
        Self {
            w1: (1.0 - c.beta1) as f32,
            w2: (1.0 - c.beta2) as f32,
            bc2: bc2 as f32,
            eps: c.eps as f32,
            step: (-c.lr / bc1) as f32,
            grad_scale: grad_scale as f32,
        }
    }

    /// Moments and parameter in one pass: compiled for AVX2 where the CPU has it (8 lanes;
    /// the same IEEE operations in the same order, so the same bits), else for the baseline.
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(k: &Elementwise, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
            k.body(p, g, m, v)
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2; the function compiles the same loop for it.
            unsafe { avx2(self, p, g, m, v) };
            return;
        }
        self.body(p, g, m, v)
    }

    #[inline(always)]
    fn body(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for j in 0..p.len() {
            let g = g[j] * self.grad_scale;
            // libtorch's lerp for weights below one half: start + w·(end − start).
            m[j] += self.w1 * (g - m[j]);
            v[j] += self.w2 * (g * g - v[j]);
            p[j] += m[j] / ((v[j] / self.bc2).sqrt() + self.eps) * self.step;
        }
    }
}

/// Adam over the trainable variables of one [`VarStore`].
///
/// Unlike tch's optimiser, its moments and step count can be saved and restored, so a
/// resumed run continues bit for bit ([`Adam::state`], [`Adam::load_state`]). The moments of
/// all parameters live in one flat tensor each, so a step is a handful of large operations
/// rather than a dozen small ones per parameter (the same arithmetic element by element).
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Offset of each parameter in the flat moments.
    offsets: Vec<i64>,
    m: Tensor,
    v: Tensor,
    step: u64,
}

impl Adam {
    /// Optimises every trainable variable of `vs` (in name order).
    pub fn new(vs: &VarStore, config: AdamConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<_>, Vec<_>) = vars.into_iter().unzip();
        let mut offsets = Vec::with_capacity(params.len());
        let mut total = 0;
        for p in &params {
            offsets.push(total);
            total += p.numel() as i64;
        }
        let (kind, device) = params.first().map(|p| (p.kind(), p.device())).unwrap_or((tch::Kind::Float, vs.device()));
        let m = Tensor::zeros([total], (kind, device));
        let v = Tensor::zeros([total], (kind, device));
        Self { config, names, params, offsets, m, v, step: 0 }
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

    /// Parameter `i`'s part of a flat tensor, shaped like the parameter.
    fn part(&self, flat: &Tensor, i: usize) -> Tensor {
        flat.narrow(0, self.offsets[i], self.params[i].numel() as i64).view_as(&self.params[i])
    }

    /// Applies one update from the current gradients. Parameters without a gradient are
    /// left untouched. Returns the global gradient norm before clipping, when clipping is on.
    pub fn step(&mut self) -> Option<f64> {
        let c = self.config.clone();
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
            let scale = |g: Tensor| match norm {
                Some((_, s)) if s < 1.0 => g * s,
                _ => g,
            };
            if c.weight_decay > 0.0 {
                for (p, g) in self.params.iter_mut().zip(&grads) {
                    if g.defined() {
                        let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
                    }
                }
            }
            let all = grads.iter().all(|g| g.defined());
            let grad_scale = match norm {
                Some((_, s)) if s < 1.0 => s,
                _ => 1.0,
            };
            if all && self.fused_cpu_step(&grads, &c, bc1, bc2, grad_scale) {
                // Done in one pass per parameter.
            } else if all {
                // One pass over all parameters: flat gradient, moments and update.
                let flat: Vec<Tensor> = grads.iter().map(|g| g.view([-1])).collect();
                let g = scale(Tensor::cat(&flat, 0));
                let _ = self.m.lerp_(&g, 1.0 - c.beta1);
                let _ = self.v.lerp_(&g.square(), 1.0 - c.beta2);
                let update = &self.m / ((&self.v / bc2).sqrt() + c.eps) * (-c.lr / bc1);
                for i in 0..self.params.len() {
                    let u = self.part(&update, i);
                    let _ = self.params[i].g_add_(&u);
                }
            } else {
                for (i, g) in grads.iter().enumerate() {
                    if !g.defined() {
                        continue;
                    }
                    let g = scale(g.shallow_clone());
                    let (mut m, mut v) = (self.part(&self.m, i), self.part(&self.v, i));
                    let _ = m.lerp_(&g, 1.0 - c.beta1);
                    let _ = v.lerp_(&g.square(), 1.0 - c.beta2);
                    let u = &m / ((&v / bc2).sqrt() + c.eps) * (-c.lr / bc1);
                    let _ = self.params[i].g_add_(&u);
                }
            }
            norm.map(|(n, _)| n)
        })
    }

    /// The step for fp32 CPU tensors in one pass over each parameter's elements (moments and
    /// parameter read and written once; the tensor version above makes a dozen passes, and on
    /// a CPU these are memory-bound). Same arithmetic as the tensor version. Returns false,
    /// having changed nothing, where it does not apply (another device or kind).
    fn fused_cpu_step(&mut self, grads: &[Tensor], c: &AdamConfig, bc1: f64, bc2: f64, grad_scale: f64) -> bool {
        let fits = |t: &Tensor| t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float && t.is_contiguous();
        if !fits(&self.m) || !fits(&self.v) || !self.params.iter().chain(grads).all(fits) {
            return false;
        }
        let k = Elementwise::new(c, bc1, bc2, grad_scale);
        // SAFETY: every tensor is a contiguous fp32 CPU tensor; `m` and `v` hold `offsets[i] +
        // numel` elements for parameter i; parameters, gradients and moments are distinct
        // storages, so the slices do not alias; nothing else runs on them during the step.
        unsafe {
            let (m_all, v_all) = (self.m.data_ptr() as *mut f32, self.v.data_ptr() as *mut f32);
            for (i, (p, g)) in self.params.iter().zip(grads).enumerate() {
                let n = p.numel();
                let p = std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n);
                let g = std::slice::from_raw_parts(g.data_ptr() as *const f32, n);
                let m = std::slice::from_raw_parts_mut(m_all.add(self.offsets[i] as usize), n);
                let v = std::slice::from_raw_parts_mut(v_all.add(self.offsets[i] as usize), n);
                k.apply(p, g, m, v);
            }
        }
        true
    }

    /// Total number of optimised parameters: the length of a flat gradient.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.numel()).sum()
    }

    /// Where `param` (one of the optimised variables, or a shallow clone of one) starts in a
    /// flat gradient; `None` for any other tensor.
    pub fn offset_of(&self, param: &Tensor) -> Option<usize> {
        let ptr = param.data_ptr();
        self.params.iter().position(|p| p.data_ptr() == ptr).map(|i| self.offsets[i] as usize)
    }

    /// One update from a flat host gradient (every parameter's gradient, each at its
    /// [`Adam::offset_of`]) instead of the tensors' `.grad`: for gradients computed outside
    /// libtorch. The arithmetic of [`Adam::step`]'s fused pass. Fp32 CPU parameters only, and
    /// without weight decay or clipping.
    pub fn step_flat(&mut self, grads: &[f32]) -> Result<()> {
        let c = self.config.clone();
        if c.weight_decay != 0.0 || c.max_grad_norm.is_some() {
            bail!("a flat-gradient Adam step supports neither weight decay nor gradient clipping");
        }
        let fits = |t: &Tensor| t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float && t.is_contiguous();
        if !fits(&self.m) || !fits(&self.v) || !self.params.iter().all(fits) {
            bail!("a flat-gradient Adam step needs contiguous fp32 CPU parameters");
        }
        if grads.len() != self.numel() {
            bail!("flat gradient of {} numbers for {} parameters", grads.len(), self.numel());
        }
        self.step += 1;
        let t = self.step as f64;
        let k = Elementwise::new(&c, 1.0 - c.beta1.powf(t), 1.0 - c.beta2.powf(t), 1.0);
        // SAFETY: as in `fused_cpu_step`; `grads` is a host slice of the parameters' total size.
        unsafe {
            let (m_all, v_all) = (self.m.data_ptr() as *mut f32, self.v.data_ptr() as *mut f32);
            for (i, p) in self.params.iter().enumerate() {
                let (n, o) = (p.numel(), self.offsets[i] as usize);
                let p = std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n);
                let m = std::slice::from_raw_parts_mut(m_all.add(o), n);
                let v = std::slice::from_raw_parts_mut(v_all.add(o), n);
                k.apply(p, &grads[o..o + n], m, v);
            }
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`{prefix}m/{name}`, `{prefix}v/{name}`, copies
    /// shaped like their parameters) and the step count, for a checkpoint.
    pub fn state(&self, prefix: &str) -> (Vec<(String, Tensor)>, u64) {
        let mut out = Vec::with_capacity(2 * self.names.len());
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("{prefix}m/{n}"), self.part(&self.m, i).copy()));
            out.push((format!("{prefix}v/{n}"), self.part(&self.v, i).copy()));
        }
        (out, self.step)
    }

    /// Restores the state written by [`Adam::state`]; every moment must be present with the
    /// parameter's shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, prefix: &str, step: u64) -> Result<()> {
        for (i, n) in self.names.iter().enumerate() {
            for (kind, flat) in [("m", &self.m), ("v", &self.v)] {
                let key = format!("{prefix}{kind}/{n}");
                let src = tensors.get(&key).with_context(|| format!("checkpoint has no optimiser tensor '{key}'"))?;
                copy_checked(&mut self.part(flat, i), src, &key)?;
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
