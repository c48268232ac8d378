//! The exported-policy reader driven with damaged folders: random bytes in the weights or in
//! policy.json, truncations, and well-formed specs with wild numbers. It refuses them or loads
//! a policy that acts; it never panics and never allocates by a number the files cannot back.

use mvp_infer::{
    Activation, ActorKind, Aggregate, LayerWeights, MlpWeights, NativePolicy, PolicyFile, PolicyWeights, Precision,
    SPEC_FILE, WEIGHTS_FILE,
};
use proptest::prelude::*;

fn net(dims: &[usize]) -> MlpWeights {
    let layers = dims
        .windows(2)
        .map(|w| LayerWeights {
            in_dim: w[0],
            out_dim: w[1],
            weight: (0..w[0] * w[1]).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect(),
            bias: vec![0.1; w[1]],
            norm: None,
        })
        .collect();
    MlpWeights { layers, activation: Activation::Gelu }
}

/// A saved policy: (policy.json, policy.safetensors).
fn saved() -> (Vec<u8>, Vec<u8>) {
    let (s, d) = (4, 6);
    let weights = PolicyWeights {
        obs_dim: s,
        chunk_dim: d,
        num_samples: 4,
        actor: net(&[s + d + 2, 16, d]),
        actor_kind: ActorKind::MeanVelocity { steps: 1 },
        critics: vec![net(&[s + d, 16, 1])],
        aggregate: Aggregate::Mean,
    };
    let dir = tempfile::tempdir().unwrap();
    PolicyFile::new(weights, 3, Default::default()).unwrap().save(dir.path()).unwrap();
    (std::fs::read(dir.path().join(SPEC_FILE)).unwrap(), std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap())
}

/// Loads the folder and, where it loads, acts once on one observation.
fn load_and_act(spec: &[u8], weights: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SPEC_FILE), spec).unwrap();
    std::fs::write(dir.path().join(WEIGHTS_FILE), weights).unwrap();
    if let Ok(file) = PolicyFile::load(dir.path()) {
        if let Ok(mut policy) = NativePolicy::new(&file.weights, Precision::F32, 0) {
            let obs = vec![0.1; file.weights.obs_dim];
            let mut out = vec![0.0; file.weights.chunk_dim];
            policy.act(&obs, &mut out);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn damaged_weights_or_spec_bytes_are_refused(
        in_spec in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<usize>()),
    ) {
        let (mut spec, mut weights) = saved();
        let target = if in_spec { &mut spec } else { &mut weights };
        for (at, b) in edits {
            let n = target.len();
            target[at % n] = b;
        }
        if let Some(c) = cut {
            let n = target.len();
            target.truncate(c % (n + 1));
        }
        load_and_act(&spec, &weights);
    }

    #[test]
    fn wild_numbers_in_a_well_formed_spec_are_refused(
        field in 0usize..6,
        value in prop_oneof![Just(0u64), Just(1), Just(u32::MAX as u64), Just(u64::MAX), 0u64..5_000],
    ) {
        let (spec, weights) = saved();
        let mut json: serde_json::Value = serde_json::from_slice(&spec).unwrap();
        let slot = match field {
            0 => &mut json["obs_dim"],
            1 => &mut json["action_dim"],
            2 => &mut json["horizon"],
            3 => &mut json["num_samples"],
            4 => &mut json["actor"]["steps"],
            _ => &mut json["actor"]["network"]["layers"][0]["out_dim"],
        };
        *slot = value.into();
        load_and_act(&serde_json::to_vec(&json).unwrap(), &weights);
    }
}
