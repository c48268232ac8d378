//! The exported-policy format: a folder that acts without the training code.
//!
//! ```text
//! POLICY_DIR/
//!   policy.safetensors   actor.l{i}.weight [in, out], actor.l{i}.bias [out],
//!                        actor.l{i}.norm_scale / norm_shift [out] (hidden layers with LayerNorm),
//!                        critic.{m}.l{i}.* the same for critic member m
//!   policy.json          the spec: the format version, shapes, sampler, activation, layers,
//!                        aggregation, N, the preprocessing, the SHA-256 of policy.safetensors,
//!                        and free-form metadata (where it came from)
//! ```
//!
//! Readers verify the checksum and refuse a weights file that does not match it (a damaged or
//! swapped file would otherwise load and act differently). Format `mvp-policy/1` folders,
//! written before the checksum, still load.
//!
//! All tensors are little-endian f32. A network is `Linear → activation → [LayerNorm]` per
//! hidden layer, then a final `Linear` (`y = x·W + b`, W stored `[in, out]`). The actor's input
//! row is `[observation, z, t, t − r]` for a mean velocity policy (`[observation, z, t]` for a
//! flow); the critic's is `[observation, chunk]`. Acting: z ← noise ~ N(0, I) of width h·|A|;
//! for i = k−1 … 0, z ← z − u(row at t = (i+1)/k, r = i/k)/k; clip z to [−1, 1]; with N > 1
//! candidates per observation, keep the one the critic members' mean (or minimum) scores
//! highest. The chunk is h actions of |A| values, row-major. Observations are used as the
//! environment returns them (no normalisation).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::mlp::{Activation, LayerWeights, MlpWeights};
use crate::policy::{ActorKind, Aggregate, PolicyWeights};

/// The weights file in a policy folder.
pub const WEIGHTS_FILE: &str = "policy.safetensors";
/// The spec file in a policy folder.
pub const SPEC_FILE: &str = "policy.json";
/// The format this crate writes (it also reads [`FORMAT_V1`]).
pub const FORMAT: &str = "mvp-policy/2";
/// The first format: the same folder without the weights' checksum.
pub const FORMAT_V1: &str = "mvp-policy/1";
/// The most candidates per observation a policy file may ask for (they size the buffers).
pub const MAX_SAMPLES: usize = 16_384;
/// The most network calls per sample a policy file may ask for.
pub const MAX_STEPS: usize = 1_000;

/// `policy.json`: everything about an exported policy except the weights' values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// [`FORMAT`].
    pub format: String,
    /// Observation width S.
    pub obs_dim: usize,
    /// Action width |A|.
    pub action_dim: usize,
    /// Actions per chunk h.
    pub horizon: usize,
    /// Candidates per observation N (1: the actor's sample, no critic needed).
    pub num_samples: usize,
    /// The actor network.
    pub actor: ActorSpec,
    /// The critic members that score candidates (absent when none were exported).
    pub critic: Option<CriticSpec>,
    /// How inputs and outputs relate to the environment's.
    pub preprocessing: Preprocessing,
    /// SHA-256 of `policy.safetensors`, lowercase hex (set by [`PolicyFile::save`]; absent in
    /// [`FORMAT_V1`] folders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    /// Free-form: the environment, the run and step it came from, its evaluation.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The actor of a [`PolicySpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorSpec {
    /// `mean_velocity` or `flow`.
    pub kind: String,
    /// Network evaluations per sample (MVP: 1; QC's flow: 10).
    pub steps: usize,
    /// The network's shape.
    pub network: NetworkSpec,
}

/// The critic of a [`PolicySpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriticSpec {
    /// Ensemble members.
    pub members: usize,
    /// `mean` or `min` over members.
    pub aggregate: String,
    /// Each member's shape.
    pub network: NetworkSpec,
}

/// An MLP's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// `gelu` (exact, erf), `silu` or `relu`.
    pub activation: String,
    /// Input and output width of each layer, and whether a LayerNorm follows its activation.
    pub layers: Vec<LayerSpec>,
}

/// One layer of a [`NetworkSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// A LayerNorm (ε = 1e-5) after the activation.
    pub layer_norm: bool,
}

/// What a user must do to observations and actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// `raw`: the environment's observation vector as it is.
    pub observation: String,
    /// The range actions are clipped to.
    pub action_clip: [f32; 2],
}

/// Why a policy folder cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The folder's content is not a policy this crate can act with.
    #[error("{path}: {msg}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// An exported policy: its weights and spec.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyFile {
    /// The networks, ready for [`crate::NativePolicy::new`].
    pub weights: PolicyWeights,
    /// The spec (`policy.json`).
    pub spec: PolicySpec,
}

impl PolicyFile {
    /// A policy of `weights` whose chunks are `horizon` actions, with `metadata`.
    pub fn new(
        weights: PolicyWeights,
        horizon: usize,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, String> {
        if horizon == 0 || !weights.chunk_dim.is_multiple_of(horizon) {
            return Err(format!("a chunk of width {} is not {horizon} actions", weights.chunk_dim));
        }
        let (kind, steps) = match weights.actor_kind {
            ActorKind::MeanVelocity { steps } => ("mean_velocity", steps),
            ActorKind::Flow { steps } => ("flow", steps),
        };
        let critic = weights.critics.first().map(|c| CriticSpec {
            members: weights.critics.len(),
            aggregate: match weights.aggregate {
                Aggregate::Mean => "mean",
                Aggregate::Min => "min",
            }
            .into(),
            network: network_spec(c),
        });
        let spec = PolicySpec {
            format: FORMAT.into(),
            obs_dim: weights.obs_dim,
            action_dim: weights.chunk_dim / horizon,
            horizon,
            num_samples: weights.num_samples,
            actor: ActorSpec { kind: kind.into(), steps, network: network_spec(&weights.actor) },
            critic,
            preprocessing: Preprocessing { observation: "raw".into(), action_clip: [-1.0, 1.0] },
            weights_sha256: None,
            metadata,
        };
        Ok(Self { weights, spec })
    }

    /// Writes `policy.safetensors` and `policy.json` into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<(), PolicyFileError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut add = |prefix: &str, net: &MlpWeights| {
            for (i, l) in net.layers.iter().enumerate() {
                tensors.push((format!("{prefix}.l{i}.weight"), vec![l.in_dim, l.out_dim], bytes(&l.weight)));
                tensors.push((format!("{prefix}.l{i}.bias"), vec![l.out_dim], bytes(&l.bias)));
                if let Some((scale, shift)) = &l.norm {
                    tensors.push((format!("{prefix}.l{i}.norm_scale"), vec![l.out_dim], bytes(scale)));
                    tensors.push((format!("{prefix}.l{i}.norm_shift"), vec![l.out_dim], bytes(shift)));
                }
            }
        };
        add("actor", &self.weights.actor);
        for (m, c) in self.weights.critics.iter().enumerate() {
            add(&format!("critic.{m}"), c);
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, shape, data)| {
                (name.clone(), TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches the data"))
            })
            .collect();
        let path = dir.join(WEIGHTS_FILE);
        let blob = safetensors::serialize(views, None)
            .map_err(|e| PolicyFileError::Invalid { path: path.display().to_string(), msg: e.to_string() })?;
        write_atomically(&path, &blob)?;
        let spec = PolicySpec { weights_sha256: Some(sha256_hex(&blob)), ..self.spec.clone() };
        let json = serde_json::to_vec_pretty(&spec).expect("a spec serialises");
        write_atomically(&dir.join(SPEC_FILE), &json)
    }

    /// Reads a folder written by [`PolicyFile::save`], checking that spec and weights agree.
    pub fn load(dir: &Path) -> Result<Self, PolicyFileError> {
        let spec_path = dir.join(SPEC_FILE);
        let text = std::fs::read(&spec_path).map_err(|e| io(&spec_path, e))?;
        let invalid = |path: &Path, msg: String| PolicyFileError::Invalid { path: path.display().to_string(), msg };
        let spec: PolicySpec = serde_json::from_slice(&text).map_err(|e| invalid(&spec_path, e.to_string()))?;
        if spec.format != FORMAT && spec.format != FORMAT_V1 {
            let msg = format!("format {:?}, this build reads {FORMAT:?} and {FORMAT_V1:?}", spec.format);
            return Err(invalid(&spec_path, msg));
        }
        if spec.num_samples > MAX_SAMPLES || spec.actor.steps > MAX_STEPS {
            let (n, k) = (spec.num_samples, spec.actor.steps);
            let msg = format!("num_samples {n} (at most {MAX_SAMPLES}) or actor.steps {k} (at most {MAX_STEPS})");
            return Err(invalid(&spec_path, msg));
        }
        let path = dir.join(WEIGHTS_FILE);
        let blob = std::fs::read(&path).map_err(|e| io(&path, e))?;
        match (&spec.weights_sha256, spec.format.as_str()) {
            (Some(want), _) => {
                let got = sha256_hex(&blob);
                if got != want.to_ascii_lowercase() {
                    let msg = format!("damaged: its SHA-256 is {got}, {SPEC_FILE} records {want}");
                    return Err(invalid(&path, msg));
                }
            }
            (None, FORMAT_V1) => {}
            (None, _) => return Err(invalid(&spec_path, format!("format {FORMAT:?} without `weights_sha256`"))),
        }
        let st = SafeTensors::deserialize(&blob).map_err(|e| invalid(&path, e.to_string()))?;
        let named: HashMap<String, TensorView<'_>> = st.tensors().into_iter().collect();
        let fetch = |name: &str, shape: &[usize]| -> Result<Vec<f32>, PolicyFileError> {
            let t = named.get(name).ok_or_else(|| invalid(&path, format!("no tensor {name}")))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(invalid(
                    &path,
                    format!("{name} is {:?} {:?}, the spec says F32 {shape:?}", t.dtype(), t.shape()),
                ));
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        let read_net = |prefix: &str, net: &NetworkSpec| -> Result<MlpWeights, PolicyFileError> {
            let activation = match net.activation.as_str() {
                "gelu" => Activation::Gelu,
                "silu" => Activation::Silu,
                "relu" => Activation::Relu,
                other => return Err(invalid(&spec_path, format!("activation {other:?} (gelu, silu or relu)"))),
            };
            let mut layers = Vec::new();
            for (i, l) in net.layers.iter().enumerate() {
                let norm = if l.layer_norm {
                    Some((
                        fetch(&format!("{prefix}.l{i}.norm_scale"), &[l.out_dim])?,
                        fetch(&format!("{prefix}.l{i}.norm_shift"), &[l.out_dim])?,
                    ))
                } else {
                    None
                };
                layers.push(LayerWeights {
                    in_dim: l.in_dim,
                    out_dim: l.out_dim,
                    weight: fetch(&format!("{prefix}.l{i}.weight"), &[l.in_dim, l.out_dim])?,
                    bias: fetch(&format!("{prefix}.l{i}.bias"), &[l.out_dim])?,
                    norm,
                });
            }
            if layers.is_empty() {
                return Err(invalid(&spec_path, format!("{prefix} has no layers")));
            }
            Ok(MlpWeights { layers, activation })
        };
        let actor_kind = match spec.actor.kind.as_str() {
            "mean_velocity" => ActorKind::MeanVelocity { steps: spec.actor.steps },
            "flow" => ActorKind::Flow { steps: spec.actor.steps },
            other => return Err(invalid(&spec_path, format!("actor kind {other:?} (mean_velocity or flow)"))),
        };
        let (critics, aggregate) = match &spec.critic {
            Some(c) => {
                let aggregate = match c.aggregate.as_str() {
                    "mean" => Aggregate::Mean,
                    "min" => Aggregate::Min,
                    other => return Err(invalid(&spec_path, format!("aggregate {other:?} (mean or min)"))),
                };
                let members =
                    (0..c.members).map(|m| read_net(&format!("critic.{m}"), &c.network)).collect::<Result<_, _>>()?;
                (members, aggregate)
            }
            None => (Vec::new(), Aggregate::Mean),
        };
        let chunk_dim = spec.action_dim.checked_mul(spec.horizon).ok_or_else(|| {
            invalid(&spec_path, format!("action_dim {} × horizon {} overflows", spec.action_dim, spec.horizon))
        })?;
        let weights = PolicyWeights {
            obs_dim: spec.obs_dim,
            chunk_dim,
            num_samples: spec.num_samples,
            actor: read_net("actor", &spec.actor.network)?,
            actor_kind,
            critics,
            aggregate,
        };
        Ok(Self { weights, spec })
    }
}

fn network_spec(net: &MlpWeights) -> NetworkSpec {
    NetworkSpec {
        activation: match net.activation {
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
            Activation::Relu => "relu",
        }
        .into(),
        layers: net
            .layers
            .iter()
            .map(|l| LayerSpec { in_dim: l.in_dim, out_dim: l.out_dim, layer_norm: l.norm.is_some() })
            .collect(),
    }
}

/// SHA-256 of `data` as lowercase hex.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn io(path: &Path, source: std::io::Error) -> PolicyFileError {
    PolicyFileError::Io { path: path.display().to_string(), source }
}

/// Writes through a temporary file in the same folder and a rename: a reader sees the old file
/// or the new one, never half of one.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), PolicyFileError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::Precision;
    use crate::policy::NativePolicy;

    fn net(dims: &[usize], norm: bool, seed: u32) -> MlpWeights {
        let mut k = seed;
        let mut next = move || {
            k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (k >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| LayerWeights {
                in_dim: w[0],
                out_dim: w[1],
                weight: (0..w[0] * w[1]).map(|_| next()).collect(),
                bias: (0..w[1]).map(|_| next()).collect(),
                norm: (norm && i + 2 < dims.len())
                    .then(|| ((0..w[1]).map(|_| 1.0 + next()).collect(), vec![0.1; w[1]])),
            })
            .collect();
        MlpWeights { layers, activation: Activation::Gelu }
    }

    fn weights() -> PolicyWeights {
        let (s, d) = (5, 6);
        PolicyWeights {
            obs_dim: s,
            chunk_dim: d,
            num_samples: 4,
            actor: net(&[s + d + 2, 32, 32, d], false, 1),
            actor_kind: ActorKind::MeanVelocity { steps: 1 },
            critics: vec![net(&[s + d, 32, 1], true, 2), net(&[s + d, 32, 1], true, 3)],
            aggregate: Aggregate::Min,
        }
    }

    #[test]
    fn a_saved_policy_loads_back_and_acts_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = serde_json::Map::new();
        meta.insert("env".into(), "ogbench/cube-single-play-singletask-task1-v0".into());
        let file = PolicyFile::new(weights(), 3, meta).unwrap();
        file.save(dir.path()).unwrap();
        let back = PolicyFile::load(dir.path()).unwrap();
        let checksum = back.spec.weights_sha256.clone().expect("saved with its checksum");
        assert_eq!(checksum.len(), 64);
        assert_eq!(PolicyFile { spec: PolicySpec { weights_sha256: None, ..back.spec.clone() }, ..back.clone() }, file);
        assert_eq!(back.spec.action_dim, 2);
        let obs: Vec<f32> = (0..10).map(|i| i as f32 / 10.0).collect();
        let (mut a, mut b) = (vec![0.0; 12], vec![0.0; 12]);
        NativePolicy::new(&file.weights, Precision::F32, 7).unwrap().act(&obs, &mut a);
        NativePolicy::new(&back.weights, Precision::F32, 7).unwrap().act(&obs, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn a_damaged_or_mismatched_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = PolicyFile::new(weights(), 3, Default::default()).unwrap();
        file.save(dir.path()).unwrap();
        // A spec that promises another shape than the weights hold.
        let saved =
            || -> PolicySpec { serde_json::from_slice(&std::fs::read(dir.path().join(SPEC_FILE)).unwrap()).unwrap() };
        let mut spec = saved();
        spec.obs_dim = 9;
        spec.actor.network.layers[0].in_dim = 17;
        std::fs::write(dir.path().join(SPEC_FILE), serde_json::to_vec(&spec).unwrap()).unwrap();
        let err = PolicyFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("policy.safetensors") && err.contains("actor.l0.weight"), "{err}");
        // A truncated weights file.
        file.save(dir.path()).unwrap();
        let path = dir.path().join(WEIGHTS_FILE);
        let blob = std::fs::read(&path).unwrap();
        std::fs::write(&path, &blob[..blob.len() / 2]).unwrap();
        let err = PolicyFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("policy.safetensors"), "{err}");
        // 40 bytes overwritten inside the weights: the file still parses, the checksum does not match.
        file.save(dir.path()).unwrap();
        let mut blob = std::fs::read(&path).unwrap();
        let mid = blob.len() / 2;
        blob[mid..mid + 40].fill(0x5a);
        std::fs::write(&path, &blob).unwrap();
        let err = PolicyFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("policy.safetensors") && err.contains("damaged"), "{err}");
        // The same folder with the checksum removed and the first format: loads (older exports).
        let mut spec = saved();
        (spec.format, spec.weights_sha256) = (FORMAT_V1.into(), None);
        std::fs::write(dir.path().join(SPEC_FILE), serde_json::to_vec(&spec).unwrap()).unwrap();
        assert!(PolicyFile::load(dir.path()).is_ok());
        // A spec asking for 4 billion network calls per sample (found by fuzzing: the load
        // succeeded and acting hung) is refused.
        let mut wild = saved();
        wild.actor.steps = u32::MAX as usize;
        std::fs::write(dir.path().join(SPEC_FILE), serde_json::to_vec(&wild).unwrap()).unwrap();
        let err = PolicyFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("actor.steps 4294967295"), "{err}");
        // ... and the current format without a checksum is refused.
        spec.format = FORMAT.into();
        std::fs::write(dir.path().join(SPEC_FILE), serde_json::to_vec(&spec).unwrap()).unwrap();
        let err = PolicyFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("weights_sha256"), "{err}");
        // No folder at all.
        let err = PolicyFile::load(&dir.path().join("nothing")).unwrap_err().to_string();
        assert!(err.contains("policy.json"), "{err}");
        // A chunk that is not whole actions.
        assert!(PolicyFile::new(weights(), 4, Default::default()).is_err());
    }
}
