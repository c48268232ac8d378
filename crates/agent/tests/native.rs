//! The libtorch-free acting path (`mvp-infer`) computes what the training code computes: the
//! same candidates from the same noise, the same critic scores, the same selected chunk.

use mvp_actor::{ActorConfig, DiffusionConfig, FlowConfig, MvpConfig};
use mvp_agent::config::{AgentConfig, Engine};
use mvp_agent::Agent;
use mvp_infer::{Isa, Precision};
use mvp_nn::MlpConfig;
use tch::{Device, Kind, Tensor};

const S: usize = 37;
const A: usize = 5;

/// libtorch's generator is global: tests that seed it and compare draws run one at a time.
fn lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn agent(actor: ActorConfig) -> Agent {
    agent_on(actor, Engine::Auto)
}

fn agent_on(actor: ActorConfig, select_engine: Engine) -> Agent {
    tch::set_num_threads(1);
    tch::manual_seed(7);
    let mut config = AgentConfig {
        actor,
        select_engine,
        select_precision: Some(mvp_nn::MatmulPrecision::F32),
        ..AgentConfig::default()
    };
    config.critic.network.hidden = vec![256; 3];
    let mut agent = Agent::new(S, A, &config, Device::Cpu).unwrap();
    // A few updates so the weights are not at their initial values (biases, LayerNorm).
    let mut b = mvp_replay::ChunkBatch::new(16, 5, S, A);
    mvp_agent::agent::fill_synthetic(&mut b);
    for _ in 0..3 {
        agent.update(&b).unwrap();
    }
    agent
}

fn net() -> MlpConfig {
    MlpConfig { hidden: vec![256; 3], ..MlpConfig::default() }
}

fn host(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap()
}

fn compare(agent: &Agent, precision: Precision, tol: f32) {
    let (b, n, d) = (3usize, 32usize, 5 * A);
    let obs = Tensor::randn([b as i64, S as i64], (Kind::Float, Device::Cpu));
    let noise = Tensor::randn([(b * n) as i64, d as i64], (Kind::Float, Device::Cpu));
    let (chosen, parts) = agent.select_with_noise(&obs, &noise, n);
    let (cands, scores) = parts.unwrap();
    let mut native = agent.native_policy(precision, 0).unwrap();
    let mut out = vec![0.0; b * d];
    native.act_with_noise(&host(&obs), &host(&noise), &mut out);
    let max_err = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    let cand_err = max_err(&native.candidates()[..b * n * d], &host(&cands));
    let score_err = max_err(&native.scores()[..b * n], &host(&scores));
    assert!(cand_err < tol, "{precision:?}: candidates differ by {cand_err}");
    assert!(score_err < tol * 10.0, "{precision:?}: scores differ by {score_err}");
    if precision == Precision::F32 {
        // The same chunk is selected unless two candidates' scores are within rounding.
        let (scores, chosen) = (host(&scores), host(&chosen));
        for row in 0..b {
            let s = &scores[row * n..(row + 1) * n];
            let mut sorted = s.to_vec();
            sorted.sort_by(|p, q| q.total_cmp(p));
            if sorted[0] - sorted[1] > 1e-4 {
                assert!(
                    max_err(&out[row * d..(row + 1) * d], &chosen[row * d..(row + 1) * d]) < tol,
                    "row {row}: another chunk was selected"
                );
            }
        }
    }
}

#[test]
fn native_mvp_matches_the_training_code() {
    let _g = lock();
    let a = agent(ActorConfig::Mvp(MvpConfig { network: net(), ..MvpConfig::default() }));
    compare(&a, Precision::F32, 1e-4);
    if mvp_infer::has_avx512_bf16() {
        compare(&a, Precision::Bf16, 5e-2);
    }
}

#[test]
fn native_multi_step_mvp_and_qc_flow_match_the_training_code() {
    let _g = lock();
    let a = agent(ActorConfig::Mvp(MvpConfig { network: net(), sampling_steps: 3, ..MvpConfig::default() }));
    compare(&a, Precision::F32, 1e-4);
    let a = agent(ActorConfig::Flow(FlowConfig { network: net(), steps: 10, ..FlowConfig::default() }));
    compare(&a, Precision::F32, 1e-4);
}

#[test]
fn actors_without_a_native_path_say_so() {
    let _g = lock();
    let a = agent(ActorConfig::Diffusion(DiffusionConfig { network: net(), steps: 5, ..DiffusionConfig::default() }));
    let err = a.native_policy(Precision::F32, 0).unwrap_err().to_string();
    assert!(err.contains("no native acting path"), "{err}");
}

/// Runs `f` once for every kernel family this CPU runs, with the native engine capped to it
/// (the cap is process-wide: callers hold [`lock`]).
fn on_every_isa(mut f: impl FnMut(Isa)) {
    for isa in Isa::available() {
        Isa::set_cap(Some(isa));
        f(isa);
    }
    Isa::set_cap(None);
}

/// The TD target's generate-and-select on the native engine (`agent.select_engine`, the default
/// on a CPU) computes the training code's targets: from the same noise the same chunks are
/// selected and the targets agree to fp32 rounding, on every kernel family this CPU runs.
#[test]
fn native_td_target_selection_matches_libtorch() {
    let _g = lock();
    on_every_isa(selection_matches_libtorch);
}

fn selection_matches_libtorch(isa: Isa) {
    let actors = [
        ActorConfig::Mvp(MvpConfig { network: net(), ..MvpConfig::default() }),
        ActorConfig::Flow(FlowConfig { network: net(), steps: 10, ..FlowConfig::default() }),
    ];
    for actor in actors {
        let mut reference = agent_on(actor.clone(), Engine::Libtorch);
        let mut native = agent_on(actor, Engine::Native);
        assert!(native.selects_natively() && !reference.selects_natively());
        assert_eq!(native.engines().isa, isa);
        let (tensors, steps) = reference.state();
        let tensors = tensors.into_iter().collect();
        native.load_state(&tensors, steps).unwrap();

        let rows = 64;
        let mut b = mvp_replay::ChunkBatch::new(rows, 5, S, A);
        tch::manual_seed(3);
        let obs = host(&Tensor::randn([rows as i64, S as i64], (Kind::Float, Device::Cpu)));
        b.observations.copy_from_slice(&obs);
        b.next_observations.copy_from_slice(&obs);
        b.rewards.iter_mut().enumerate().for_each(|(i, r)| *r = -((i % 5) as f32));
        b.masks.iter_mut().enumerate().for_each(|(i, m)| *m = (i % 7 != 0) as i32 as f32);
        b.valid.fill(1.0);
        tch::manual_seed(11);
        let (target_ref, chunk_ref) = reference.td_target(&b).unwrap();
        tch::manual_seed(11);
        let (target_native, chunk_native) = native.td_target(&b).unwrap();
        let (t_ref, t_nat, c_ref, c_nat) =
            (host(&target_ref), host(&target_native), host(&chunk_ref), host(&chunk_native));
        let d = 5 * A;
        let mut other_choice = 0;
        for row in 0..rows {
            let chunk_err = (0..d).map(|j| (c_ref[row * d + j] - c_nat[row * d + j]).abs()).fold(0f32, f32::max);
            if chunk_err > 1e-4 {
                other_choice += 1; // two candidates within rounding of each other
                continue;
            }
            assert!(
                (t_ref[row] - t_nat[row]).abs() < 1e-4,
                "{isa}, row {row}: targets {} vs {}",
                t_ref[row],
                t_nat[row]
            );
        }
        assert!(other_choice <= 1, "{isa}: {other_choice} of {rows} rows selected another chunk");
    }
}

/// An MVP agent (3×256 critic, batch 64) whose critic and actor updates run on `engine`.
fn mvp_agent_updating_on(engine: Engine) -> anyhow::Result<Agent> {
    let actor = ActorConfig::Mvp(MvpConfig { network: net(), ..MvpConfig::default() });
    let mut config = AgentConfig {
        actor,
        select_engine: Engine::Native,
        select_precision: Some(mvp_nn::MatmulPrecision::F32),
        critic_engine: engine,
        actor_engine: engine,
        ..AgentConfig::default()
    };
    config.critic.network.hidden = vec![256; 3];
    config.batch_size = 64;
    Agent::new(S, A, &config, Device::Cpu)
}

/// Runs `steps` updates of `reference` and of `native` (from the reference's state) on the
/// same random batches and draws, with `num_samples(step)` candidates, and checks that the
/// metrics `keys` agree to `tol` relative to 1 + |value|.
fn assert_updates_track(
    mut reference: Agent,
    mut native: Agent,
    steps: i64,
    num_samples: impl Fn(i64) -> usize,
    keys: &[&str],
    tol: f64,
) {
    let (tensors, state_steps) = reference.state();
    native.load_state(&tensors.into_iter().collect(), state_steps).unwrap();
    let metric = |m: &[(&str, Tensor)], k: &str| m.iter().find(|(n, _)| *n == k).unwrap().1.double_value(&[]);
    for step in 0..steps {
        let rows = 64;
        let mut b = mvp_replay::ChunkBatch::new(rows, 5, S, A);
        tch::manual_seed(100 + step);
        b.observations.copy_from_slice(&host(&Tensor::randn([rows as i64, S as i64], (Kind::Float, Device::Cpu))));
        b.next_observations.copy_from_slice(&host(&Tensor::randn([rows as i64, S as i64], (Kind::Float, Device::Cpu))));
        b.actions.copy_from_slice(&host(&Tensor::rand([(rows * 5 * A) as i64], (Kind::Float, Device::Cpu))));
        b.rewards.iter_mut().enumerate().for_each(|(i, r)| *r = -((i % 3) as f32));
        b.masks.iter_mut().enumerate().for_each(|(i, m)| *m = (i % 7 != 0) as i32 as f32);
        b.valid.iter_mut().enumerate().for_each(|(i, v)| *v = (i % 11 != 0) as i32 as f32);
        reference.set_num_samples(num_samples(step));
        native.set_num_samples(num_samples(step));
        tch::manual_seed(7 + step);
        let m_ref = reference.update(&b).unwrap();
        tch::manual_seed(7 + step);
        let m_nat = native.update(&b).unwrap();
        for &key in keys {
            let (r, n) = (metric(&m_ref, key), metric(&m_nat, key));
            assert!((r - n).abs() <= tol * (1.0 + r.abs()), "update {step}: {key} {n} (native) vs {r} (libtorch)");
        }
    }
}

/// Training with the critic's and the actor's updates on the native kernels follows the
/// libtorch updates: from the same state and batches, the TD losses, values and actor losses
/// of 20 updates agree to fp32 rounding, also after the candidate count changes midway, as
/// between a run's offline and online phases (the gradients themselves are compared in the
/// crate's unit tests), on every kernel family this CPU runs.
#[test]
fn native_updates_track_libtorch_ones() {
    let _g = lock();
    on_every_isa(|isa| {
        let reference = mvp_agent_updating_on(Engine::Libtorch).unwrap();
        let native = mvp_agent_updating_on(Engine::Native).unwrap();
        assert!(native.critic_natively() && !reference.critic_natively());
        assert!(native.actor_natively() && !reference.actor_natively());
        assert_eq!(native.engines().isa, isa);
        let keys =
            ["critic/loss", "critic/q_mean", "critic/target_mean", "actor/mf_loss", "actor/ivc_loss", "actor/loss"];
        assert_updates_track(reference, native, 20, |step| if step < 10 { 32 } else { 4 }, &keys, 1e-3);
    });
}

/// With `runtime.matmul = "bf16"` the native updates multiply bf16 operands (where the CPU has
/// AVX512-BF16; elsewhere asking for them names the setting): ten updates follow libtorch's
/// bf16 updates to bf16 rounding.
#[test]
fn bf16_products_run_the_native_updates() {
    let _g = lock();
    mvp_nn::MatmulPrecision::Bf16.scope(|| {
        if !mvp_infer::has_avx512_bf16() {
            let err = mvp_agent_updating_on(Engine::Native).err().expect("bf16 needs AVX512-BF16").to_string();
            assert!(err.contains("runtime.matmul") && err.contains("AVX512-BF16"), "{err}");
            return;
        }
        let reference = mvp_agent_updating_on(Engine::Libtorch).unwrap();
        let native = mvp_agent_updating_on(Engine::Native).unwrap();
        assert!(native.critic_natively() && native.actor_natively() && !reference.critic_natively());
        let keys = ["critic/loss", "critic/q_mean", "actor/mf_loss", "actor/ivc_loss"];
        assert_updates_track(reference, native, 10, |_| 32, &keys, 1e-2);
    });
}

#[test]
fn asking_for_the_native_engine_where_it_cannot_run_names_the_key() {
    let _g = lock();
    let config = AgentConfig {
        actor: ActorConfig::Diffusion(DiffusionConfig { network: net(), steps: 5, ..DiffusionConfig::default() }),
        select_engine: Engine::Native,
        ..AgentConfig::default()
    };
    let err = Agent::new(S, A, &config, Device::Cpu).err().expect("diffusion has no native path").to_string();
    assert!(err.contains("agent.select_engine") && err.contains("libtorch"), "{err}");
    // `auto` falls back to libtorch for it.
    let config = AgentConfig { select_engine: Engine::Auto, ..config };
    assert!(!Agent::new(S, A, &config, Device::Cpu).unwrap().selects_natively());
    // The same for the actor's update: MP1's dispersive loss has no native form.
    let actor = ActorConfig::Mvp(MvpConfig { network: net(), dispersive_weight: 0.5, ..MvpConfig::default() });
    let config = AgentConfig { actor, actor_engine: Engine::Native, ..AgentConfig::default() };
    let err = Agent::new(S, A, &config, Device::Cpu).err().expect("no native dispersive loss").to_string();
    assert!(err.contains("agent.actor_engine") && err.contains("dispersive"), "{err}");
    let config = AgentConfig { actor_engine: Engine::Auto, ..config };
    assert!(!Agent::new(S, A, &config, Device::Cpu).unwrap().actor_natively());
}

/// An exported policy acts like the agent it came from: written as a policy folder, loaded back
/// by `mvp-infer` and by the NumPy module `envs/mvp_policy.py`, it selects the same chunks from
/// the same observations and noise (to fp32 rounding; rows whose two best scores are within
/// rounding of each other are skipped).
#[test]
fn an_exported_policy_acts_like_the_agent_in_rust_and_in_python() {
    let _g = lock();
    for actor in [
        ActorConfig::Mvp(MvpConfig { network: net(), ..MvpConfig::default() }),
        ActorConfig::Flow(FlowConfig { network: net(), steps: 4, ..FlowConfig::default() }),
    ] {
        let agent = agent(actor);
        let dir = tempfile::tempdir().unwrap();
        mvp_infer::PolicyFile::new(agent.policy_weights().unwrap(), 5, Default::default())
            .unwrap()
            .save(dir.path())
            .unwrap();
        let file = mvp_infer::PolicyFile::load(dir.path()).unwrap();
        let (b, n, d) = (4usize, file.spec.num_samples, 5 * A);
        assert_eq!((file.spec.obs_dim, file.spec.action_dim, n), (S, A, 32));
        let obs = Tensor::randn([b as i64, S as i64], (Kind::Float, Device::Cpu));
        let noise = Tensor::randn([(b * n) as i64, d as i64], (Kind::Float, Device::Cpu));
        let (chosen, parts) = agent.select_with_noise(&obs, &noise, n);
        let (chosen, scores) = (host(&chosen), host(&parts.unwrap().1));

        let mut native = mvp_infer::NativePolicy::new(&file.weights, Precision::F32, 0).unwrap();
        let mut rust = vec![0.0; b * d];
        native.act_with_noise(&host(&obs), &host(&noise), &mut rust);

        let bytes = |x: Vec<f32>| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let (obs_file, noise_file, out_file) =
            (dir.path().join("obs.f32"), dir.path().join("noise.f32"), dir.path().join("out.f32"));
        std::fs::write(&obs_file, bytes(host(&obs))).unwrap();
        std::fs::write(&noise_file, bytes(host(&noise))).unwrap();
        let script = mvp_envs::project_root().join("envs/mvp_policy.py");
        let run_python = || {
            mvp_envs::python_command()
                .unwrap()
                .arg(&script)
                .arg(dir.path())
                .args(["--obs", obs_file.to_str().unwrap(), "--noise", noise_file.to_str().unwrap()])
                .args(["--out", out_file.to_str().unwrap()])
                .output()
                .unwrap()
        };
        let out = run_python();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let python: Vec<f32> = std::fs::read(&out_file)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(python.len(), b * d);

        let max_err = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        let mut compared = 0;
        for row in 0..b {
            let mut s = scores[row * n..(row + 1) * n].to_vec();
            s.sort_by(|p, q| q.total_cmp(p));
            if s[0] - s[1] <= 1e-4 {
                continue;
            }
            compared += 1;
            let want = &chosen[row * d..(row + 1) * d];
            assert!(max_err(&rust[row * d..(row + 1) * d], want) < 1e-4, "row {row}: mvp-infer chose another chunk");
            assert!(
                max_err(&python[row * d..(row + 1) * d], want) < 1e-4,
                "row {row}: mvp_policy.py chose another chunk"
            );
        }
        assert!(compared >= 2, "too many near-ties to compare");

        // 40 bytes overwritten inside the weights: both loaders refuse the folder, naming the file.
        let weights = dir.path().join(mvp_infer::WEIGHTS_FILE);
        let mut blob = std::fs::read(&weights).unwrap();
        let mid = blob.len() / 2;
        blob[mid..mid + 40].fill(0x5a);
        std::fs::write(&weights, &blob).unwrap();
        let err = mvp_infer::PolicyFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("policy.safetensors") && err.contains("damaged"), "{err}");
        let out = run_python();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("policy.safetensors: damaged"), "{stderr}");
    }
}

/// `agent.imitation`: updates train the actor on the stored chunks and leave the critic (and
/// its target) untouched.
#[test]
fn imitation_updates_train_the_actor_only() {
    let _g = lock();
    tch::manual_seed(3);
    let config = AgentConfig {
        imitation: true,
        num_samples: 1,
        actor: ActorConfig::Mvp(MvpConfig {
            network: MlpConfig { hidden: vec![32; 2], ..MlpConfig::default() },
            ..MvpConfig::default()
        }),
        ..AgentConfig::default()
    };
    let mut agent = Agent::new(S, A, &config, Device::Cpu).unwrap();
    let snapshot = |a: &Agent| -> Vec<(String, Vec<f32>)> {
        a.state()
            .0
            .iter()
            .filter(|(n, _)| !n.contains("_opt/"))
            .map(|(n, t)| (n.clone(), host(&t.view([-1]))))
            .collect()
    };
    let before = snapshot(&agent);
    let mut b = mvp_replay::ChunkBatch::new(16, 5, S, A);
    for (i, x) in b.observations.iter_mut().enumerate() {
        *x = ((i * 7) % 11) as f32 / 11.0;
    }
    b.actions.iter_mut().enumerate().for_each(|(i, x)| *x = ((i * 5) % 9) as f32 / 4.5 - 1.0);
    b.valid.fill(1.0);
    let metrics = agent.update(&b).unwrap();
    assert!(metrics.iter().all(|(name, _)| name.starts_with("actor/")), "{metrics:?}");
    for ((name, x), (_, y)) in before.iter().zip(&snapshot(&agent)) {
        let changed = x != y;
        assert_eq!(changed, name.starts_with("actor/"), "{name}: changed = {changed}");
    }
}

/// `agent.actor_ema`: the acting actor is the moving average of the trained weights (checked
/// update by update), it is what `policy_weights` (evaluation, export) carries, and it is saved
/// and restored with the agent's state.
#[test]
fn the_acting_actor_is_the_moving_average_of_the_trained_one() {
    let _g = lock();
    tch::manual_seed(5);
    let config = AgentConfig {
        imitation: true,
        num_samples: 1,
        actor_ema: 0.9,
        actor: ActorConfig::Mvp(MvpConfig {
            network: MlpConfig { hidden: vec![16; 2], ..MlpConfig::default() },
            ..MvpConfig::default()
        }),
        ..AgentConfig::default()
    };
    let mut agent = Agent::new(S, A, &config, Device::Cpu).unwrap();
    let named = |a: &Agent, name: &str| -> Vec<f32> {
        let (state, _) = a.state();
        host(&state.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1.view([-1]))
    };
    let mut b = mvp_replay::ChunkBatch::new(8, 5, S, A);
    b.observations.iter_mut().enumerate().for_each(|(i, x)| *x = (i % 7) as f32 / 7.0);
    b.actions.iter_mut().enumerate().for_each(|(i, x)| *x = ((i * 3) % 5) as f32 / 2.5 - 1.0);
    b.valid.fill(1.0);
    let mut expected = named(&agent, "actor/l0.weight");
    assert_eq!(named(&agent, "actor_ema/l0.weight"), expected, "the average starts at the initial weights");
    for _ in 0..3 {
        agent.update(&b).unwrap();
        let trained = named(&agent, "actor/l0.weight");
        expected.iter_mut().zip(&trained).for_each(|(e, t)| *e = 0.9 * *e + 0.1 * t);
        let ema = named(&agent, "actor_ema/l0.weight");
        let err = ema.iter().zip(&expected).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(err < 1e-6, "moving average off by {err}");
        assert_ne!(ema, trained);
    }
    let w = agent.policy_weights().unwrap();
    assert_eq!(
        w.actor.layers[0].weight,
        named(&agent, "actor_ema/l0.weight"),
        "evaluation and export act with the average"
    );
    // Saved and restored with the state.
    let tensors: std::collections::HashMap<String, Tensor> = agent.state().0.into_iter().collect();
    let mut restored = Agent::new(S, A, &config, Device::Cpu).unwrap();
    restored.load_state(&tensors, [3, 0]).unwrap();
    assert_eq!(named(&restored, "actor_ema/l0.weight"), named(&agent, "actor_ema/l0.weight"));
}
