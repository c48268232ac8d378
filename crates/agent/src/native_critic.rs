//! The critic's TD update on the native kernels (`agent.critic_engine`): the target members'
//! values of the selected chunks, the online members' forward and backward passes
//! ([`mvp_infer::MlpGrad`], fp32) and Adam from the host gradients ([`Adam::step_flat`]). The
//! same loss as [`mvp_critic::Critic::td_loss`] — the mean over members and batch of
//! `(Q − y)²·valid` — without a libtorch call between the batch and the parameters; at CPU
//! batch sizes libtorch spends most of this update dispatching small operations.

use anyhow::{bail, Result};
use mvp_critic::{Aggregate, Critic};
use mvp_infer::{MlpGrad, Precision};
use mvp_nn::{Activation, Adam, EnsembleMlp};

use crate::native::{params, widths, FlatGrads};

/// The native critic update's state: per-member forward/backward workspaces and the
/// gradient in the optimiser's layout.
#[derive(Debug)]
pub struct NativeCritic {
    online: Vec<MlpGrad>,
    target: Vec<MlpGrad>,
    dims: Vec<usize>,
    /// The last update's gradient ([`FlatGrads::flat`] for [`Adam::step_flat`]).
    pub grads: FlatGrads,
    input: Vec<f32>,
}

impl NativeCritic {
    /// The update with its kernels from `isa` (tests of each family).
    #[cfg(test)]
    fn with_isa(mut self, isa: mvp_infer::Isa) -> Self {
        let set = |works: Vec<MlpGrad>| works.into_iter().map(|w| w.with_isa(isa)).collect();
        self.online = set(self.online);
        self.target = set(self.target);
        self
    }

    /// The native update of `critic`, optimised by `opt`; an error says why it cannot run
    /// (another activation, device or parameter layout).
    pub fn new(critic: &Critic, opt: &Adam, precision: Precision) -> Result<Self> {
        let net = critic.online();
        if net.activation() != Activation::Gelu {
            bail!("the native critic update supports GELU critics, not {:?}", net.activation());
        }
        let layers = net.layers();
        let dims = widths(layers)?;
        let layer_norm = layers.iter().any(|l| l.norm.is_some());
        let members = net.members();
        let make = || (0..members).map(|_| MlpGrad::with_precision(&dims, layer_norm, precision)).collect::<Vec<_>>();
        Ok(Self { online: make(), target: make(), grads: FlatGrads::new(layers, &dims, opt)?, dims, input: Vec::new() })
    }

    fn fill_input(&mut self, obs: &[f32], chunks: &[f32], rows: usize) {
        let (s, d) = (obs.len() / rows, chunks.len() / rows);
        self.input.clear();
        for r in 0..rows {
            self.input.extend_from_slice(&obs[r * s..(r + 1) * s]);
            self.input.extend_from_slice(&chunks[r * d..(r + 1) * d]);
        }
    }

    /// Each member's values `[E][rows]` of `net` (with `works`) at `[obs, chunks]`.
    fn values(
        works: &mut [MlpGrad],
        net: &EnsembleMlp,
        dims: &[usize],
        input: &[f32],
        rows: usize,
        backward: bool,
    ) -> Vec<Vec<f32>> {
        works
            .iter_mut()
            .enumerate()
            .map(|(e, w)| {
                let p = params(net.layers(), dims, e);
                w.set_params(&p, backward);
                let stride = w.out_stride();
                let out = w.forward(input, rows, &p);
                (0..rows).map(|r| out[r * stride]).collect()
            })
            .collect()
    }

    /// The TD target `[rows]`: `rewards + γ^h·masks·V(next_obs, next_chunks)` with V the
    /// target members' values combined as the critic's config says.
    pub fn td_target(
        &mut self,
        critic: &Critic,
        next_obs: &[f32],
        next_chunks: &[f32],
        rewards: &[f32],
        masks: &[f32],
        horizon: usize,
    ) -> Vec<f32> {
        let rows = rewards.len();
        self.fill_input(next_obs, next_chunks, rows);
        let q = Self::values(&mut self.target, critic.target(), &self.dims, &self.input, rows, false);
        let discount = critic.config().gamma.powi(horizon as i32) as f32;
        (0..rows)
            .map(|r| {
                let v = combine(critic.config().aggregate, q.iter().map(|m| m[r]));
                rewards[r] + discount * masks[r] * v
            })
            .collect()
    }

    /// The TD loss of the online members at `[obs, chunks]` against `target` (samples counted
    /// where `valid`), its gradient in [`NativeCritic::grads`], and the online values `[E][rows]`.
    pub fn loss_and_grads(
        &mut self,
        critic: &Critic,
        obs: &[f32],
        chunks: &[f32],
        target: &[f32],
        valid: &[f32],
    ) -> (f64, Vec<Vec<f32>>) {
        let rows = target.len();
        self.fill_input(obs, chunks, rows);
        let net = critic.online();
        let q = Self::values(&mut self.online, net, &self.dims, &self.input, rows, true);
        let n = (q.len() * rows) as f32;
        let mut loss = 0.0f64;
        for (e, qe) in q.iter().enumerate() {
            let dq: Vec<f32> = (0..rows)
                .map(|r| {
                    let err = qe[r] - target[r];
                    loss += f64::from(err * err * valid[r]);
                    2.0 * err * valid[r] / n
                })
                .collect();
            let p = params(net.layers(), &self.dims, e);
            self.online[e].backward(&dq, &p, &mut self.grads.layers(e));
        }
        (loss / f64::from(n), q)
    }
}

/// The members' values combined by `aggregate`.
pub fn combine(aggregate: Aggregate, values: impl Iterator<Item = f32>) -> f32 {
    match aggregate {
        Aggregate::Mean => {
            let (sum, n) = values.fold((0.0f32, 0usize), |(s, n), v| (s + v, n + 1));
            sum / n as f32
        }
        Aggregate::Min => values.fold(f32::INFINITY, f32::min),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::{assert_flat_grads_match, host, test_precisions};
    use mvp_critic::{AggregateExt, CriticConfig};
    use mvp_nn::{AdamConfig, MlpConfig};
    use tch::{Device, Kind, Tensor};

    /// The native TD target, loss and gradients against libtorch's on the same critic and
    /// batch (random weights, LayerNorm on and off, mean and min aggregation).
    #[test]
    fn native_td_loss_and_gradients_equal_libtorch() {
        let _rng = crate::native::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let cases = [(true, Aggregate::Mean), (false, Aggregate::Min)];
        for ((precision, isa, matmul, grad_tol, tol), (layer_norm, aggregate)) in
            test_precisions().into_iter().flat_map(|p| cases.map(|c| (p, c)))
        {
            tch::manual_seed(7);
            let (s, d, b, h) = (11usize, 10usize, 37usize, 5usize);
            // 48 → 64 is a layer whose weight gradient the kernel writes in place; the others copy.
            let network = MlpConfig { hidden: vec![48, 64], activation: Activation::Gelu, layer_norm };
            let config = CriticConfig { network, ensemble: 3, aggregate, ..CriticConfig::default() };
            let critic = Critic::new(Device::Cpu, s, d, config);
            // Make the target differ from the online members, and every LayerNorm non-trivial.
            tch::no_grad(|| {
                for (_, mut t) in critic.target_vs.variables() {
                    let _ = t.g_add_(&(t.randn_like() * 0.1));
                }
                for (_, mut t) in critic.vs.variables() {
                    let _ = t.g_add_(&(t.randn_like() * 0.05));
                }
            });
            let opt = Adam::new(&critic.vs, AdamConfig::default());
            let obs = Tensor::randn([b as i64, s as i64], (Kind::Float, Device::Cpu));
            let chunks = Tensor::randn([b as i64, d as i64], (Kind::Float, Device::Cpu)).clamp(-1.0, 1.0);
            let next_obs = Tensor::randn([b as i64, s as i64], (Kind::Float, Device::Cpu));
            let next_chunks = Tensor::randn([b as i64, d as i64], (Kind::Float, Device::Cpu)).clamp(-1.0, 1.0);
            let rewards = Tensor::randn([b as i64], (Kind::Float, Device::Cpu));
            let masks = Tensor::rand([b as i64], (Kind::Float, Device::Cpu)).gt(0.2).to_kind(Kind::Float);
            let valid = Tensor::rand([b as i64], (Kind::Float, Device::Cpu)).gt(0.1).to_kind(Kind::Float);

            // libtorch
            let (target, loss) = matmul.scope(|| {
                let next_v = aggregate.apply(&critic.q_target(&next_obs, &next_chunks));
                let target = critic.td_target(&rewards, &masks, &next_v, h);
                let (loss, _) = critic.td_loss(&obs, &chunks, &target, &valid);
                loss.backward();
                (target, loss)
            });

            // native
            let mut native = NativeCritic::new(&critic, &opt, precision).unwrap().with_isa(isa);
            let y = native.td_target(&critic, &host(&next_obs), &host(&next_chunks), &host(&rewards), &host(&masks), h);
            for (a, e) in y.iter().zip(host(&target)) {
                assert!(f64::from((a - e).abs()) <= 10.0 * tol * (1.0 + f64::from(e.abs())), "TD target {a} vs {e}");
            }
            let (native_loss, _) =
                native.loss_and_grads(&critic, &host(&obs), &host(&chunks), &host(&target), &host(&valid));
            let l = loss.double_value(&[]);
            assert!((native_loss - l).abs() <= tol * (1.0 + l.abs()), "{precision:?} loss {native_loss} vs {l}");
            let what = format!("{precision:?} critic");
            let checked = assert_flat_grads_match(&critic.vs, &opt, &native.grads.flat, &what, grad_tol);
            assert_eq!(checked, if layer_norm { 3 * 2 + 2 * 2 } else { 3 * 2 });
        }
    }
}
