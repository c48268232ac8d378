//! The deployment boundary: a trained agent's networks as the native engine's plain weights
//! (`mvp-infer`, host f32 copies). The one place where the training crates (nn, actor,
//! critic) meet the engine; they do not depend on it.

use mvp_actor::GenerativePolicy;
use mvp_critic::Critic;
use mvp_infer::{ActorKind, LayerWeights, MlpWeights, PolicyWeights};
use mvp_nn::{EnsembleMlp, Layer, Mlp};
use tch::{Device, Kind, Tensor};

/// The weights of `net`.
pub fn mlp(net: &Mlp) -> MlpWeights {
    MlpWeights { layers: net.layers().iter().map(|l| layer(l, None)).collect(), activation: net.activation() }
}

/// The weights of each member of `net`.
pub fn ensemble(net: &EnsembleMlp) -> Vec<MlpWeights> {
    (0..net.members() as i64)
        .map(|e| MlpWeights {
            layers: net.layers().iter().map(|l| layer(l, Some(e))).collect(),
            activation: net.activation(),
        })
        .collect()
}

/// The actor's network and sampler, or why it has no native path.
pub fn actor(policy: &dyn GenerativePolicy) -> Result<(MlpWeights, ActorKind), String> {
    let native = policy.native()?;
    Ok((mlp(native.net), native.sampler))
}

/// The online critic members and their aggregation.
pub fn critic(critic: &Critic) -> (Vec<MlpWeights>, mvp_infer::Aggregate) {
    (ensemble(critic.online()), critic.config().aggregate)
}

/// A whole acting policy: the actor and, for generate-and-select with `num_samples` > 1, the
/// online critic that scores the candidates.
pub fn policy_weights(
    policy: &dyn GenerativePolicy,
    scorer: Option<&Critic>,
    obs_dim: usize,
    chunk_dim: usize,
    num_samples: usize,
) -> Result<PolicyWeights, String> {
    let (actor, actor_kind) = actor(policy)?;
    let (critics, aggregate) = scorer.map(critic).unwrap_or((Vec::new(), mvp_infer::Aggregate::Mean));
    Ok(PolicyWeights { obs_dim, chunk_dim, num_samples, actor, actor_kind, critics, aggregate })
}

/// `t`'s values (member `e`'s part of an ensemble tensor `[E, ...]`), row-major on the host:
/// a plain copy for fp32 CPU tensors (once per update for the TD target's selection), through
/// libtorch otherwise.
fn host(t: &Tensor, member: Option<i64>) -> Vec<f32> {
    let (e, len) = match member {
        Some(e) => (e as usize, t.numel() / t.size()[0] as usize),
        None => (0, t.numel()),
    };
    if t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() {
        return crate::native::member(t, e, len).to_vec();
    }
    let t = match member {
        Some(e) => t.select(0, e),
        None => t.shallow_clone(),
    };
    crate::native::host(&t.detach().to_device(Device::Cpu))
}

/// Layer `l` of ensemble member `member` (`None`: a plain MLP).
fn layer(l: &Layer, member: Option<i64>) -> LayerWeights {
    let size = l.weight.size();
    let (in_dim, out_dim) = (size[size.len() - 2] as usize, size[size.len() - 1] as usize);
    LayerWeights {
        in_dim,
        out_dim,
        weight: host(&l.weight, member),
        bias: host(&l.bias, member),
        norm: l.norm.as_ref().map(|(s, b)| (host(s, member), host(b, member))),
    }
}
