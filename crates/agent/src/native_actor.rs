//! The actor's update on the native kernels (`agent.actor_engine`): the generative loss of an
//! MVP or flow actor ([`NativeLoss`]) — for MVP the MeanFlow target with its forward-mode JVP
//! and the IVC — and its backward pass on [`mvp_infer::MlpGrad`] (fp32), the gradient landing
//! in the optimiser's flat layout for [`mvp_nn::Adam::step_flat`]. The noise and times are
//! libtorch's draws ([`mvp_actor::GenerativePolicy::loss_draws`]), so both engines train on
//! the same randomness; at CPU batch sizes libtorch spends most of this update dispatching
//! small operations and recording the graph of the JVP.
//!
//! One batched forward pass serves the whole loss: the MeanFlow rows `[s, z, t, t − r]` and
//! the IVC rows `[s, z, t, 0]` as one batch (their gradients add up in one backward pass),
//! and the tangent of the MeanFlow rows along `(0, v, 1, 1)` in the same products.

use anyhow::{bail, Result};
use mvp_actor::{GenerativePolicy, NativeLoss};
use mvp_infer::{MlpGrad, Precision};
use mvp_nn::{Activation, Adam, Mlp};

use crate::native::{params, widths, FlatGrads};

/// One batch of the actor's loss as host rows: `B` observations `[B, S]`, data chunks,
/// per-number masks, noise `[B, D]` each, and times `[B]`.
#[derive(Debug, Clone, Copy)]
pub struct ActorRows<'a> {
    /// Observations.
    pub obs: &'a [f32],
    /// The data chunks x.
    pub actions: &'a [f32],
    /// 1 where a chunk number counts (the chunk step is valid), else 0.
    pub mask: &'a [f32],
    /// ε.
    pub eps: &'a [f32],
    /// t.
    pub t: &'a [f32],
    /// r (MeanFlow).
    pub r: Option<&'a [f32]>,
}

/// The native actor update's state: the network's workspace, its loss and the gradient.
#[derive(Debug)]
pub struct NativeActorUpdate {
    work: MlpGrad,
    loss: NativeLoss,
    dims: Vec<usize>,
    /// The last update's gradient ([`FlatGrads::flat`] for [`Adam::step_flat`]).
    pub grads: FlatGrads,
    input: Vec<f32>,
    tangent: Vec<f32>,
    dy: Vec<f32>,
}

impl NativeActorUpdate {
    /// The update with its kernels from `isa` (tests of each family).
    #[cfg(test)]
    fn with_isa(mut self, isa: mvp_infer::Isa) -> Self {
        self.work = self.work.with_isa(isa);
        self
    }

    /// The native update of `actor`, optimised by `opt`; an error says why it cannot run.
    pub fn new(actor: &dyn GenerativePolicy, opt: &Adam, precision: Precision) -> Result<Self> {
        let loss = actor.native_loss().map_err(anyhow::Error::msg)?;
        let net = actor.native().map_err(anyhow::Error::msg)?.net;
        if net.activation() != Activation::Gelu {
            bail!("it supports GELU actors, not {:?}", net.activation());
        }
        let layers = net.layers();
        let dims = widths(layers)?;
        let layer_norm = layers.iter().any(|l| l.norm.is_some());
        Ok(Self {
            work: MlpGrad::with_precision(&dims, layer_norm, precision),
            loss,
            grads: FlatGrads::new(layers, &dims, opt)?,
            dims,
            input: Vec::new(),
            tangent: Vec::new(),
            dy: Vec::new(),
        })
    }

    /// The loss of the actor's network `net` on `b`, its gradient into [`Self::grads`], and
    /// the loss's parts under the names the libtorch loss logs them.
    pub fn loss_and_grads(&mut self, net: &Mlp, b: &ActorRows<'_>) -> Vec<(&'static str, f64)> {
        let rows = b.t.len();
        let d = self.dims[self.dims.len() - 1];
        let s = b.obs.len() / rows;
        assert_eq!(b.obs.len(), rows * s);
        assert!(b.actions.len() == rows * d && b.mask.len() == rows * d && b.eps.len() == rows * d);
        let (mean_flow, ivc_weight) = match self.loss {
            NativeLoss::MeanFlow { ivc_weight } => (true, ivc_weight),
            NativeLoss::Flow => (false, 0.0),
        };
        assert_eq!(self.dims[0], s + d + if mean_flow { 2 } else { 1 }, "inputs [s, z, times]");
        let r = b.r.filter(|_| mean_flow);
        assert!(!mean_flow || r.is_some_and(|r| r.len() == rows), "MeanFlow needs r [B]");
        let ivc = mean_flow && ivc_weight != 0.0;
        let primal = if ivc { 2 * rows } else { rows };
        // Inputs: the MeanFlow (or flow) rows, then the IVC rows; tangents of the first rows.
        self.input.clear();
        self.tangent.clear();
        for part in 0..primal / rows {
            for i in 0..rows {
                let t = b.t[i];
                self.input.extend_from_slice(&b.obs[i * s..(i + 1) * s]);
                let (x, eps) = (&b.actions[i * d..(i + 1) * d], &b.eps[i * d..(i + 1) * d]);
                self.input.extend(x.iter().zip(eps).map(|(&x, &e)| (1.0 - t) * x + t * e));
                self.input.push(t);
                if let Some(r) = r {
                    self.input.push(if part == 0 { t - r[i] } else { 0.0 });
                }
            }
        }
        let tangent_rows = if mean_flow { rows } else { 0 };
        for i in 0..tangent_rows {
            let (x, eps) = (&b.actions[i * d..(i + 1) * d], &b.eps[i * d..(i + 1) * d]);
            self.tangent.extend(std::iter::repeat_n(0.0, s));
            self.tangent.extend(x.iter().zip(eps).map(|(&x, &e)| e - x));
            self.tangent.extend([1.0, 1.0]);
        }
        let p = params(net.layers(), &self.dims, 0);
        self.work.set_params(&p, true);
        let stride = self.work.out_stride();
        let (out, du) = self.work.forward_with_tangent(&self.input, primal, &self.tangent, tangent_rows, &p);
        // Masked means over every number of the batch's chunks, as libtorch's loss.
        let n = (rows * d) as f32;
        let (mut main, mut inst) = (0.0f64, 0.0f64);
        self.dy.clear();
        self.dy.resize(primal * d, 0.0);
        for i in 0..rows {
            for j in 0..d {
                let k = i * d + j;
                let (m, v) = (b.mask[k], b.eps[k] - b.actions[k]);
                let target = match r {
                    Some(r) => v - (b.t[i] - r[i]) * du[i * stride + j],
                    None => v,
                };
                let err = out[i * stride + j] - target;
                main += f64::from(err * err * m);
                self.dy[k] = 2.0 * err * m / n;
                if ivc {
                    let err = out[(rows + i) * stride + j] - v;
                    inst += f64::from(err * err * m);
                    self.dy[rows * d + k] = ivc_weight as f32 * 2.0 * err * m / n;
                }
            }
        }
        self.work.backward(&self.dy, &p, &mut self.grads.layers(0));
        let (main, inst) = (main / f64::from(n), inst / f64::from(n));
        if mean_flow {
            vec![("actor/mf_loss", main), ("actor/ivc_loss", inst), ("actor/loss", main + ivc_weight * inst)]
        } else {
            vec![("actor/flow_loss", main), ("actor/loss", main)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::{assert_flat_grads_match, host, test_precisions};
    use mvp_actor::{ActorConfig, ChunkShape, FlowConfig, MvpConfig};
    use mvp_nn::{AdamConfig, MlpConfig};
    use tch::{nn::VarStore, Device, Kind, Tensor};

    /// The native loss and every parameter's gradient against libtorch's loss (same draws)
    /// for MVP with and without the IVC and with a LayerNorm network, and for flow matching.
    #[test]
    fn native_actor_loss_and_gradients_equal_libtorch() {
        let _rng = crate::native::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let shape = ChunkShape { horizon: 3, action_dim: 4 };
        let (s, b) = (9usize, 37usize);
        let network = |layer_norm| MlpConfig { hidden: vec![48, 64], activation: Activation::Gelu, layer_norm };
        let cases = [
            ActorConfig::Mvp(MvpConfig { network: network(false), ..MvpConfig::default() }),
            ActorConfig::Mvp(MvpConfig { network: network(true), ivc_weight: 0.5, ..MvpConfig::default() }),
            ActorConfig::Mvp(MvpConfig { network: network(false), ivc_weight: 0.0, ..MvpConfig::default() }),
            ActorConfig::Flow(FlowConfig { network: network(false), ..FlowConfig::default() }),
        ];
        for ((precision, isa, matmul, grad_tol, tol), (case, config)) in
            test_precisions().into_iter().flat_map(|p| cases.iter().enumerate().map(move |c| (p, c)))
        {
            tch::manual_seed(11 + case as i64);
            let vs = VarStore::new(Device::Cpu);
            let actor = config.build(&vs.root(), s, shape);
            let mut variables: Vec<_> = vs.variables().into_iter().collect();
            variables.sort_by(|a, b| a.0.cmp(&b.0));
            tch::no_grad(|| {
                for (_, t) in &mut variables {
                    let _ = t.g_add_(&(t.randn_like() * 0.05));
                }
            });
            let opt = Adam::new(&vs, AdamConfig::default());
            let obs = Tensor::randn([b as i64, s as i64], (Kind::Float, Device::Cpu));
            let actions =
                Tensor::randn([b as i64, shape.flat_dim() as i64], (Kind::Float, Device::Cpu)).clamp(-1.0, 1.0);
            let valid =
                Tensor::rand([b as i64, shape.horizon as i64], (Kind::Float, Device::Cpu)).gt(0.2).to_kind(Kind::Float);
            let mask = valid.unsqueeze(-1).expand([b as i64, 3, 4], false).reshape([b as i64, -1]);

            // libtorch, then the same draws again for the native loss.
            tch::manual_seed(5);
            let metrics = matmul.scope(|| {
                let (loss, metrics) = actor.loss(&obs, &actions, Some(&valid));
                loss.backward();
                metrics
            });
            tch::manual_seed(5);
            let draws = actor.loss_draws(&actions).unwrap();
            let mut native = NativeActorUpdate::new(actor.as_ref(), &opt, precision).unwrap().with_isa(isa);
            let (eps, t, r) = (host(&draws.eps), host(&draws.t), draws.r.as_ref().map(host));
            let rows = ActorRows {
                obs: &host(&obs),
                actions: &host(&actions),
                mask: &host(&mask),
                eps: &eps,
                t: &t,
                r: r.as_deref(),
            };
            let ours = native.loss_and_grads(actor.native().unwrap().net, &rows);
            assert_eq!(ours.len(), metrics.len(), "case {case}: the same metrics");
            for ((name, v), (want_name, want)) in ours.iter().zip(&metrics) {
                assert_eq!(name, want_name);
                let want = want.double_value(&[]);
                assert!(
                    (v - want).abs() <= tol * (1.0 + want.abs()),
                    "{precision:?} case {case} {name}: {v} vs {want}"
                );
            }
            let what = format!("{precision:?} case {case}");
            let checked = assert_flat_grads_match(&vs, &opt, &native.grads.flat, &what, grad_tol);
            assert_eq!(checked, if case == 1 { 3 * 2 + 2 * 2 } else { 3 * 2 }, "case {case}: every parameter");
        }
    }

    /// Policies whose loss has no native form say why.
    #[test]
    fn unsupported_losses_are_named() {
        let _rng = crate::native::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let shape = ChunkShape { horizon: 2, action_dim: 3 };
        let vs = VarStore::new(Device::Cpu);
        let config = ActorConfig::Mvp(MvpConfig { dispersive_weight: 0.5, ..MvpConfig::default() });
        let actor = config.build(&vs.root(), 5, shape);
        let opt = Adam::new(&vs, AdamConfig::default());
        let err = NativeActorUpdate::new(actor.as_ref(), &opt, Precision::F32).unwrap_err().to_string();
        assert!(err.contains("dispersive"), "{err}");
    }
}
