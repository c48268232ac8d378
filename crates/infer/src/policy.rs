//! Generate-and-select on packed networks: N candidate chunks from the actor (one call for
//! MVP, K Euler steps for a flow actor), scored by the critic ensemble, best one returned.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::backprop::LayerParams;
use crate::gemm::Precision;
use crate::isa::Isa;
use crate::mlp::{Mlp, MlpWeights};

// Defined in mvp-spec: shared with the training crates.
pub use mvp_spec::ActorKind;

pub use mvp_spec::Aggregate;

/// Everything a trained agent contributes to acting.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyWeights {
    /// Observation width S.
    pub obs_dim: usize,
    /// Chunk width D = h·|A|.
    pub chunk_dim: usize,
    /// Candidates per observation N (1: no critic).
    pub num_samples: usize,
    /// The actor network and its sampler.
    pub actor: MlpWeights,
    /// How the actor samples.
    pub actor_kind: ActorKind,
    /// The online critic members, each on `[s, chunk]` with one output.
    pub critics: Vec<MlpWeights>,
    /// Combination of the members' values.
    pub aggregate: Aggregate,
}

/// Why a policy cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The CPU lacks the instructions the precision needs.
    #[error("bf16 acting needs a CPU with AVX512-BF16 (this one has none); use precision f32")]
    NoBf16,
    /// The networks do not fit together.
    #[error("policy networks do not fit: {0}")]
    Shape(String),
}

/// A policy ready to act: packed networks, scratch buffers and its own noise generator.
/// After the first call for a given number of observations, [`NativePolicy::act`] allocates
/// nothing.
#[derive(Debug, Clone)]
pub struct NativePolicy {
    obs_dim: usize,
    chunk_dim: usize,
    num_samples: usize,
    kind: ActorKind,
    aggregate: Aggregate,
    actor: Mlp,
    critics: Vec<Mlp>,
    rng: SmallRng,
    noise: Vec<f32>,
    z: Vec<f32>,
    scores: Vec<f32>,
    rows: usize,
}

impl NativePolicy {
    /// Packs `w` for `precision`; noise comes from a generator seeded with `seed`.
    pub fn new(w: &PolicyWeights, precision: Precision, seed: u64) -> Result<Self, InferError> {
        if precision == Precision::Bf16 && !Isa::active().has_bf16() {
            return Err(InferError::NoBf16);
        }
        // Saturating: the dimensions come from a file, and a wild one must be refused, not wrap.
        let critic_in = w.obs_dim.saturating_add(w.chunk_dim);
        let actor_in = critic_in.saturating_add(w.actor_kind.time_cols());
        if w.actor.in_dim() != actor_in || w.actor.out_dim() != w.chunk_dim {
            return Err(InferError::Shape(format!(
                "actor is {} → {}, expected {actor_in} → {}",
                w.actor.in_dim(),
                w.actor.out_dim(),
                w.chunk_dim
            )));
        }
        for c in &w.critics {
            if c.in_dim() != critic_in || c.out_dim() != 1 {
                return Err(InferError::Shape(format!(
                    "critic is {} → {}, expected {} → 1",
                    c.in_dim(),
                    c.out_dim(),
                    critic_in
                )));
            }
        }
        if w.num_samples > 1 && w.critics.is_empty() {
            return Err(InferError::Shape("selection among N > 1 candidates needs a critic".into()));
        }
        Ok(Self {
            obs_dim: w.obs_dim,
            chunk_dim: w.chunk_dim,
            num_samples: w.num_samples.max(1),
            kind: w.actor_kind,
            aggregate: w.aggregate,
            // The observation columns repeat over an observation's N candidates (and over the
            // flow steps): multiplied once per observation.
            actor: Mlp::with_shared_inputs(&w.actor, precision, w.obs_dim),
            critics: w.critics.iter().map(|c| Mlp::with_shared_inputs(c, precision, w.obs_dim)).collect(),
            rng: SmallRng::seed_from_u64(seed),
            noise: Vec::new(),
            z: Vec::new(),
            scores: Vec::new(),
            rows: 0,
        })
    }

    /// The policy with its networks' kernels from `isa` (at most [`Isa::detected`]; bf16
    /// policies need AVX-512 with AVX512-BF16).
    pub fn with_isa(mut self, isa: Isa) -> Result<Self, InferError> {
        if self.actor.precision() == Precision::Bf16 && !isa.has_bf16() {
            return Err(InferError::NoBf16);
        }
        self.actor = self.actor.with_isa(isa);
        self.critics = self.critics.into_iter().map(|c| c.with_isa(isa)).collect();
        self.rows = 0;
        Ok(self)
    }

    /// The family of kernels the policy runs.
    pub fn isa(&self) -> Isa {
        self.actor.isa()
    }

    /// Re-packs the networks from `w` (trained further since the last packing), keeping the
    /// scratch buffers and the noise generator. `w` must have the shapes, actor kind and
    /// member count this policy was built with; `w.num_samples` may differ.
    pub fn set_weights(&mut self, w: &PolicyWeights) -> Result<(), InferError> {
        let same = w.obs_dim == self.obs_dim
            && w.chunk_dim == self.chunk_dim
            && w.actor_kind == self.kind
            && w.critics.len() == self.critics.len();
        if !same {
            return Err(InferError::Shape(format!(
                "new weights ({} → {}, {:?}, {} critics) differ from the packed ones ({} → {}, {:?}, {} critics)",
                w.obs_dim,
                w.chunk_dim,
                w.actor_kind,
                w.critics.len(),
                self.obs_dim,
                self.chunk_dim,
                self.kind,
                self.critics.len()
            )));
        }
        if w.num_samples > 1 && w.critics.is_empty() {
            return Err(InferError::Shape("selection among N > 1 candidates needs a critic".into()));
        }
        self.actor.repack(&w.actor)?;
        for (c, cw) in self.critics.iter_mut().zip(&w.critics) {
            c.repack(cw)?;
        }
        self.num_samples = w.num_samples.max(1);
        self.aggregate = w.aggregate;
        self.rows = 0; // candidate buffers are re-sized for the new N on the next call
        Ok(())
    }

    /// [`NativePolicy::set_weights`] from borrowed parameters of the same networks (the
    /// actor's layers and each critic member's) and the candidate count: repacks without
    /// copying the parameters first, for the TD target's selection after every training step.
    pub fn set_layers(
        &mut self,
        actor: &[LayerParams<'_>],
        critics: &[Vec<LayerParams<'_>>],
        num_samples: usize,
    ) -> Result<(), InferError> {
        if critics.len() != self.critics.len() {
            return Err(InferError::Shape(format!(
                "{} critics given for {} packed ones",
                critics.len(),
                self.critics.len()
            )));
        }
        if num_samples > 1 && critics.is_empty() {
            return Err(InferError::Shape("selection among N > 1 candidates needs a critic".into()));
        }
        self.actor.repack_layers(actor)?;
        for (c, layers) in self.critics.iter_mut().zip(critics) {
            c.repack_layers(layers)?;
        }
        if num_samples.max(1) != self.num_samples {
            self.num_samples = num_samples.max(1);
            self.rows = 0; // candidate buffers are re-sized for the new N on the next call
        }
        Ok(())
    }

    /// Observation width.
    pub fn obs_dim(&self) -> usize {
        self.obs_dim
    }

    /// Chunk width.
    pub fn chunk_dim(&self) -> usize {
        self.chunk_dim
    }

    /// Candidates per observation.
    pub fn num_samples(&self) -> usize {
        self.num_samples
    }

    /// Actor network evaluations per action.
    pub fn network_calls(&self) -> usize {
        self.kind.steps()
    }

    fn reserve(&mut self, batch: usize) {
        let rows = batch * self.num_samples;
        if rows <= self.rows {
            return;
        }
        self.rows = rows;
        self.actor.reserve(rows);
        self.actor.reserve_shared(batch);
        for c in &mut self.critics {
            c.reserve(rows);
            c.reserve_shared(batch);
        }
        self.noise = vec![0.0; rows * self.chunk_dim];
        self.z = vec![0.0; rows * self.chunk_dim];
        self.scores = vec![0.0; rows];
    }

    /// Generate-and-select for `obs` (`B × S`, row-major): writes the chosen chunks to `out`
    /// (`B × D`). Noise is drawn from the policy's generator.
    pub fn act(&mut self, obs: &[f32], out: &mut [f32]) {
        let batch = obs.len() / self.obs_dim;
        self.reserve(batch);
        let n = batch * self.num_samples * self.chunk_dim;
        let rng = &mut self.rng;
        self.noise[..n].iter_mut().for_each(|x| *x = rng.sample(StandardNormal));
        self.run(obs, batch, None, out);
    }

    /// [`NativePolicy::act`] with given noise (`B·N × D`, candidates of observation b in rows
    /// b·N .. b·N + N), for tests against the training code.
    pub fn act_with_noise(&mut self, obs: &[f32], noise: &[f32], out: &mut [f32]) {
        let batch = obs.len() / self.obs_dim;
        self.reserve(batch);
        self.run(obs, batch, Some(noise), out);
    }

    /// The candidates of the last call (`B·N × D`).
    pub fn candidates(&self) -> &[f32] {
        &self.z
    }

    /// The aggregated critic scores of the last call's candidates (`B·N`).
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    fn run(&mut self, obs: &[f32], batch: usize, noise: Option<&[f32]>, out: &mut [f32]) {
        let (s, d, ns) = (self.obs_dim, self.chunk_dim, self.num_samples);
        assert_eq!(obs.len(), batch * s, "observations must be B × {s}");
        assert_eq!(out.len(), batch * d, "output must be B × {d}");
        let rows = batch * ns;
        let noise = noise.unwrap_or(&self.noise[..rows * d]);
        assert_eq!(noise.len(), rows * d, "noise must be B·N × {d}");
        self.z[..rows * d].copy_from_slice(noise);

        // The actor's input: [s_b] once per observation, [z_j, times] per candidate and step.
        fill_shared(&mut self.actor, obs, batch, s);
        let stride = self.actor.in_stride();
        let k = self.kind.steps();
        let step = 1.0 / k as f32;
        for i in (0..k).rev() {
            let times = match self.kind {
                // Jump from t = (i+1)/k to r = i/k with the mean velocity: inputs t, t − r.
                ActorKind::MeanVelocity { .. } => {
                    [(i + 1) as f32 / k as f32, (i + 1) as f32 / k as f32 - i as f32 / k as f32]
                }
                // Euler step at t = (i+1)/k.
                ActorKind::Flow { .. } => [(i + 1) as f32 / k as f32, 0.0],
            };
            let cols = self.kind.time_cols();
            let input = self.actor.input_mut(rows);
            for (j, row) in input.chunks_exact_mut(stride).enumerate() {
                row[..d].copy_from_slice(&self.z[j * d..(j + 1) * d]);
                row[d..d + cols].copy_from_slice(&times[..cols]);
            }
            let out_stride = self.actor.out_stride();
            let u = self.actor.forward_grouped(rows, ns);
            for (j, z) in self.z[..rows * d].chunks_exact_mut(d).enumerate() {
                for (zc, uc) in z.iter_mut().zip(&u[j * out_stride..j * out_stride + d]) {
                    *zc -= uc * step;
                }
            }
        }
        self.z[..rows * d].iter_mut().for_each(|x| *x = x.clamp(-1.0, 1.0));

        if ns == 1 {
            out.copy_from_slice(&self.z[..rows * d]);
            return;
        }
        let members = self.critics.len() as f32;
        for (m, critic) in self.critics.iter_mut().enumerate() {
            fill_shared(critic, obs, batch, s);
            let stride = critic.in_stride();
            let input = critic.input_mut(rows);
            for (j, row) in input.chunks_exact_mut(stride).enumerate() {
                row[..d].copy_from_slice(&self.z[j * d..(j + 1) * d]);
            }
            let out_stride = critic.out_stride();
            let q = critic.forward_grouped(rows, ns);
            for (j, score) in self.scores[..rows].iter_mut().enumerate() {
                let v = q[j * out_stride];
                *score = match (m, self.aggregate) {
                    (0, _) => v,
                    (_, Aggregate::Mean) => *score + v,
                    (_, Aggregate::Min) => score.min(v),
                };
            }
        }
        if self.aggregate == Aggregate::Mean {
            self.scores[..rows].iter_mut().for_each(|x| *x /= members);
        }
        for b in 0..batch {
            let scores = &self.scores[b * ns..(b + 1) * ns];
            let best = (1..ns).fold(0, |best, j| if scores[j] > scores[best] { j } else { best });
            out[b * d..(b + 1) * d].copy_from_slice(&self.z[(b * ns + best) * d..(b * ns + best + 1) * d]);
        }
    }
}

/// Writes the `batch` observations (`s` wide) as the shared inputs of `net`.
fn fill_shared(net: &mut Mlp, obs: &[f32], batch: usize, s: usize) {
    let stride = net.shared_stride();
    for (b, row) in net.shared_input_mut(batch).chunks_exact_mut(stride).enumerate() {
        row[..s].copy_from_slice(&obs[b * s..(b + 1) * s]);
    }
}
