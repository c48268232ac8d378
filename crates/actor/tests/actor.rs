//! Behaviour tests of the generative policies (CPU, one thread).

use mvp_actor::expressiveness::{self, Budget, Task};
use mvp_actor::{
    ActorConfig, ChunkShape, DiffusionConfig, FlowConfig, GenerativePolicy, MeanVelocityPolicy, MvpConfig,
};
use mvp_nn::{Adam, AdamConfig, Mlp, MlpConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// libtorch's RNG is global; tests hold this lock so seeded draws are not interleaved.
static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    let g = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    g
}

const SHAPE: ChunkShape = ChunkShape { horizon: 3, action_dim: 2 };

fn small() -> MlpConfig {
    MlpConfig { hidden: vec![32, 32], ..MlpConfig::default() }
}

fn f64_mvp(config: MvpConfig) -> (VarStore, MeanVelocityPolicy) {
    tch::manual_seed(0);
    let mut vs = VarStore::new(Device::Cpu);
    let p = MeanVelocityPolicy::new(&vs.root(), 4, SHAPE, MvpConfig { network: small(), ..config });
    vs.double();
    (vs, p)
}

fn batch(b: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    let opts = (Kind::Double, Device::Cpu);
    let obs = Tensor::randn([b, 4], opts);
    let x = Tensor::rand([b, 6], opts) * 2.0 - 1.0;
    let eps = Tensor::randn([b, 6], opts);
    let t = Tensor::rand([b, 1], opts);
    (obs, x, eps, t)
}

#[test]
fn mvp_loss_at_equal_times_equals_flow_matching_loss() {
    let _g = lock();
    let (_vs, p) = f64_mvp(MvpConfig::default());
    let (obs, x, eps, t) = batch(16);
    let valid = Tensor::from_slice(&[1.0f64, 1.0, 0.0]).unsqueeze(0).repeat([16, 1]);
    let parts = p.loss_parts(&obs, &x, Some(&valid), &eps, &t, &t);
    // Flow matching with the same network at (r, t) = (t, t): regress u on v = ε − x.
    let z = (1.0 - &t) * &x + &t * &eps;
    let err = (p.mean_velocity(&obs, &z, &t, &t) - (&eps - &x)) * valid.repeat_interleave_self_int(2, 1, None);
    let fm = err.square().mean(Kind::Double).double_value(&[]);
    let mf = parts.mean_flow.double_value(&[]);
    assert!((mf - fm).abs() <= 1e-12 * fm.max(1.0), "L_MF {mf} vs flow matching {fm}");
    assert!((parts.ivc.double_value(&[]) - fm).abs() <= 1e-12 * fm.max(1.0), "L_IVC differs from flow matching");
}

#[test]
fn mean_flow_target_matches_a_finite_difference_target() {
    let _g = lock();
    let (_vs, p) = f64_mvp(MvpConfig::default());
    let (obs, x, eps, t) = batch(8);
    let r = &t * Tensor::rand([8, 1], (Kind::Double, Device::Cpu));
    let parts = p.loss_parts(&obs, &x, None, &eps, &r, &t);
    // du/dt along (dz, dr, dt) = (v, 0, 1), by central differences.
    let v = &eps - &x;
    let z = (1.0 - &t) * &x + &t * &eps;
    let h = 1e-5;
    let up = p.mean_velocity(&obs, &(&z + &v * h), &r, &(&t + h));
    let down = p.mean_velocity(&obs, &(&z - &v * h), &r, &(&t - h));
    let fd_target = &v - (&t - &r) * ((up - down) / (2.0 * h));
    let rel = (&parts.target - &fd_target).norm().double_value(&[]) / fd_target.norm().double_value(&[]);
    assert!(rel < 1e-6, "JVP target vs finite differences: relative error {rel:e}");
    assert!(!parts.target.requires_grad(), "the MeanFlow target must be stop-gradient");
    assert!(parts.prediction.requires_grad());
}

/// MP1's CFG folding: at ω = 1 the target is the plain MeanFlow target; at ω = 2 it is the
/// finite-difference target along v̂ = 2v − u(z, t, t) (the network's own instantaneous velocity).
#[test]
fn cfg_folded_target_reduces_to_the_plain_target_at_omega_one() {
    let _g = lock();
    let (obs, x, eps, t) = batch(8);
    let r = &t * Tensor::rand([8, 1], (Kind::Double, Device::Cpu));
    let (_vs, plain) = f64_mvp(MvpConfig::default());
    let (_vs1, one) = f64_mvp(MvpConfig { cfg_omega: 1.0, ..MvpConfig::default() });
    let (_vs2, two) = f64_mvp(MvpConfig { cfg_omega: 2.0, ..MvpConfig::default() });
    let target = |p: &MeanVelocityPolicy| p.loss_parts(&obs, &x, None, &eps, &r, &t).target;
    assert_eq!(target(&one), target(&plain));
    let z = (1.0 - &t) * &x + &t * &eps;
    let v_hat = 2.0 * (&eps - &x) - two.mean_velocity(&obs, &z, &t, &t);
    let h = 1e-5;
    let up = two.mean_velocity(&obs, &(&z + &v_hat * h), &r, &(&t + h));
    let down = two.mean_velocity(&obs, &(&z - &v_hat * h), &r, &(&t - h));
    let fd_target = &v_hat - (&t - &r) * ((up - down) / (2.0 * h));
    let got = target(&two);
    let rel = (&got - &fd_target).norm().double_value(&[]) / fd_target.norm().double_value(&[]);
    assert!(rel < 1e-6, "CFG-folded target vs finite differences: relative error {rel:e}");
    assert!((&got - target(&plain)).norm().double_value(&[]) > 1e-3, "ω = 2 changes the target");
}

/// The dispersive loss and its gradient equal a direct pair-by-pair computation.
#[test]
fn dispersive_loss_value_and_gradient_match_a_direct_computation() {
    let _g = lock();
    tch::manual_seed(4);
    let (b, tau) = (6usize, 0.7);
    let h = Tensor::randn([b as i64, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let fast = mvp_actor::dispersive_loss(&h, tau);
    let g_fast = Tensor::run_backward(&[&fast], &[&h], false, false).pop().unwrap();
    // Directly: every pair's squared distance, divided by the largest, through exp and log.
    let h2 = h.detach().copy().set_requires_grad(true);
    let d: Vec<Tensor> = (0..b)
        .flat_map(|i| (0..b).map(move |j| (i, j)))
        .map(|(i, j)| (h2.get(i as i64) - h2.get(j as i64)).square().sum(Kind::Double))
        .collect();
    let d = Tensor::stack(&d, 0);
    let direct = (-(&d / d.max()) / tau).exp().mean(Kind::Double).log();
    let g_direct = Tensor::run_backward(&[&direct], &[&h2], false, false).pop().unwrap();
    // And the value in plain f64 arithmetic.
    let rows: Vec<Vec<f64>> = (0..b).map(|i| Vec::<f64>::try_from(h.get(i as i64).detach()).unwrap()).collect();
    let dist = |i: usize, j: usize| rows[i].iter().zip(&rows[j]).map(|(p, q)| (p - q) * (p - q)).sum::<f64>();
    let max = (0..b).flat_map(|i| (0..b).map(move |j| (i, j))).map(|(i, j)| dist(i, j)).fold(0.0, f64::max);
    let by_hand =
        ((0..b).flat_map(|i| (0..b).map(move |j| (i, j))).map(|(i, j)| (-dist(i, j) / max / tau).exp()).sum::<f64>()
            / (b * b) as f64)
            .ln();
    let (v_fast, v_direct) = (fast.double_value(&[]), direct.double_value(&[]));
    assert!((v_fast - v_direct).abs() < 1e-12 && (v_fast - by_hand).abs() < 1e-12, "{v_fast} {v_direct} {by_hand}");
    let g_err = (&g_fast - &g_direct).abs().max().double_value(&[]);
    assert!(g_err < 1e-10, "gradients differ by {g_err}");
    assert!(g_fast.abs().max().double_value(&[]) > 1e-6, "a gradient to compare");
    // In the MVP loss it is its own term, logged, and zero when off.
    let (_vs, p) = f64_mvp(MvpConfig { dispersive_weight: 0.5, dispersive_layer: 1, ..MvpConfig::default() });
    let (obs, x, eps, t) = batch(8);
    let parts = p.loss_parts(&obs, &x, None, &eps, &(&t * 0.5), &t);
    assert!(parts.dispersive.double_value(&[]) < 0.0 && parts.dispersive.requires_grad());
    let (_vs, off) = f64_mvp(MvpConfig::default());
    assert_eq!(off.loss_parts(&obs, &x, None, &eps, &t, &t).dispersive.double_value(&[]), 0.0);
}

#[test]
fn masked_steps_do_not_count_in_the_loss() {
    let _g = lock();
    let (_vs, p) = f64_mvp(MvpConfig::default());
    let (obs, x, eps, t) = batch(8);
    let r = &t * 0.5;
    let valid = Tensor::from_slice(&[1.0f64, 1.0, 0.0]).unsqueeze(0).repeat([8, 1]);
    let parts = p.loss_parts(&obs, &x, Some(&valid), &eps, &r, &t);
    let mask = valid.repeat_interleave_self_int(2, 1, None);
    let expect = ((&parts.prediction - &parts.target).square() * &mask).mean(Kind::Double);
    assert!((&parts.mean_flow - expect).abs().double_value(&[]) < 1e-12);
    let unmasked = p.loss_parts(&obs, &x, None, &eps, &r, &t);
    assert!(unmasked.mean_flow.double_value(&[]) > parts.mean_flow.double_value(&[]));
}

#[test]
fn samples_have_the_chunk_shape_and_lie_in_range() {
    let _g = lock();
    let configs = [
        ActorConfig::Mvp(MvpConfig { network: small(), ..MvpConfig::default() }),
        ActorConfig::Mvp(MvpConfig { network: small(), sampling_steps: 4, ..MvpConfig::default() }),
        ActorConfig::Flow(FlowConfig { network: small(), ..FlowConfig::default() }),
        ActorConfig::Diffusion(DiffusionConfig { network: small(), steps: 20, ..DiffusionConfig::default() }),
    ];
    let calls = [1, 4, 10, 20];
    for (config, calls) in configs.iter().zip(calls) {
        let vs = VarStore::new(Device::Cpu);
        let p = config.build(&vs.root(), 4, SHAPE);
        let obs = Tensor::randn([7, 4], (Kind::Float, Device::Cpu));
        let noise = Tensor::randn([7, 6], (Kind::Float, Device::Cpu)) * 3.0;
        let a = p.sample(&obs, &noise);
        assert_eq!(a.size(), vec![7, 6], "{}", config.label());
        assert!(a.abs().max().double_value(&[]) <= 1.0, "{} leaves [-1, 1]", config.label());
        assert!(!a.requires_grad());
        assert_eq!(p.network_calls(), calls, "{}", config.label());
        let (loss, metrics) = p.loss(&obs, &a, None);
        assert!(loss.requires_grad() && loss.double_value(&[]).is_finite());
        assert!(metrics.iter().any(|(n, _)| *n == "actor/loss"));
    }
}

#[test]
fn actor_config_reads_toml_and_names_unknown_keys() {
    let c: ActorConfig =
        toml::from_str("kind = \"mvp\"\nivc_weight = 0.5\n[time_sampler]\ndist = \"uniform\"\n").unwrap();
    match c {
        ActorConfig::Mvp(m) => assert_eq!(m.ivc_weight, 0.5),
        other => panic!("parsed as {other:?}"),
    }
    let err = toml::from_str::<ActorConfig>("kind = \"flow\"\nstepz = 3\n").unwrap_err().to_string();
    assert!(err.contains("stepz"), "{err}");
    let err = toml::from_str::<ActorConfig>("kind = \"gan\"\n").unwrap_err().to_string();
    assert!(err.contains("mvp") && err.contains("diffusion"), "{err}");
}

#[test]
fn one_step_mvp_covers_both_modes_where_a_regressor_falls_between() {
    let _g = lock();
    let task = Task::Bimodal1d;
    // About 10 s on one core. One-step MVP needs more steps than a 10-step flow to make its
    // noise-to-action map steep enough between the modes (see the expressiveness benchmark).
    let budget = Budget { steps: 5000, batch: 256, lr: 1e-3, eval_states: 32, samples_per_state: 128 };
    let net = MlpConfig { hidden: vec![64, 64, 64], ..MlpConfig::default() };
    let mvp = ActorConfig::Mvp(MvpConfig { network: net.clone(), ..MvpConfig::default() });
    let r = expressiveness::run(task, &mvp, 1, &budget, Device::Cpu, |_, _| None);
    assert!(r.quality.coverage >= 0.99, "MVP covers {:.2} of the modes", r.quality.coverage);
    assert!(r.quality.between <= 0.10, "MVP puts {:.3} of its mass between modes", r.quality.between);

    // The same network trained as a unimodal regressor (MSE to the action) fails both checks.
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let mlp = Mlp::new(&vs.root(), 1, 1, &net);
    let mut adam = Adam::new(&vs, AdamConfig { lr: 1e-3, ..AdamConfig::default() });
    for _ in 0..budget.steps {
        let obs = task.sample_obs(256, Device::Cpu);
        let act = task.sample_actions(&obs);
        adam.backward_step(&(mlp.forward(&obs) - act).square().mean(Kind::Float));
    }
    let obs = task.sample_obs(32, Device::Cpu);
    let x = tch::no_grad(|| mlp.forward(&obs)).unsqueeze(1).repeat([1, 128, 1]);
    let y = task.sample_actions(&obs.repeat_interleave_self_int(128, 0, None)).view([32, 128, 1]);
    let q = expressiveness::quality(task, &obs, &x, &y);
    assert!(q.between > 0.5 && q.coverage < 0.6, "regressor unexpectedly multimodal: {q:?}");
}

#[test]
fn time_pairs_hit_the_one_step_point_at_the_configured_share() {
    let _g = lock();
    tch::manual_seed(7);
    let like = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let share_at_jump = |one_step: f64, equal: f64| -> (f64, f64) {
        let (_vs, p) =
            f64_mvp(MvpConfig { one_step_fraction: one_step, equal_time_fraction: equal, ..MvpConfig::default() });
        let (r, t) = p.sample_times(20_000, &like);
        assert!(bool::try_from(r.le_tensor(&t).all()).unwrap(), "r ≤ t for every pair");
        let jump = r.eq(0.0).logical_and(&t.eq(1.0)).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        let equal = r.eq_tensor(&t).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        (jump, equal)
    };
    let (jump, _) = share_at_jump(0.0, 0.0);
    assert_eq!(jump, 0.0, "the paper's sampler never draws the exact one-step point");
    // Nor its neighbourhood: r < 0.1 with t > 0.9 in about 0.03% of logit-normal(−0.4, 1)
    // pairs (2% for uniform pairs), i.e. a handful per 20,000.
    let (_vs, p) = f64_mvp(MvpConfig { one_step_fraction: 0.0, ..MvpConfig::default() });
    let (r, t) = p.sample_times(20_000, &like);
    let near = r.lt(0.1).logical_and(&t.gt(0.9)).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(near < 0.002, "share of pairs near the one-step point: {near}");
    let (jump, _) = share_at_jump(0.25, 0.0);
    assert!((jump - 0.25).abs() < 0.015, "share at (r, t) = (0, 1): {jump}");
    // The one-step share is taken after the r = t share, so both keep their meaning.
    let (jump, equal) = share_at_jump(0.25, 0.5);
    assert!((jump - 0.25).abs() < 0.015 && (equal - 0.75 * 0.5).abs() < 0.02, "jump {jump}, equal {equal}");
}

#[test]
fn the_point_cloud_encoder_ignores_point_order_and_learns_through_the_policy_loss() {
    let _g = lock();
    tch::manual_seed(3);
    let (points, state) = (16i64, 4i64);
    let vs = VarStore::new(Device::Cpu);
    let cloud = Some(mvp_actor::PointCloudConfig { points: points as usize });
    let obs_dim = (3 * points + state) as usize;
    let policy = MeanVelocityPolicy::new(
        &vs.root(),
        obs_dim,
        SHAPE,
        MvpConfig { network: small(), point_cloud: cloud, ..MvpConfig::default() },
    );
    let opts = (Kind::Float, Device::Cpu);
    let obs = Tensor::randn([5, obs_dim as i64], opts);
    let noise = Tensor::randn([5, 6], opts);
    // Shuffling the points of each observation (not the state after them) changes nothing.
    let perm = Tensor::randperm(points, (Kind::Int64, Device::Cpu));
    let shuffled = Tensor::cat(
        &[
            obs.narrow(1, 0, 3 * points).reshape([5, points, 3]).index_select(1, &perm).reshape([5, -1]),
            obs.narrow(1, 3 * points, state),
        ],
        1,
    );
    assert!(!shuffled.allclose(&obs, 0.0, 0.0, false));
    let (a, b) = (policy.sample(&obs, &noise), policy.sample(&shuffled, &noise));
    assert!(a.allclose(&b, 1e-6, 1e-6, false), "the encoder depends on the order of the points");
    // The state after the points counts too.
    let moved = obs.copy();
    let _ = moved.narrow(1, 3 * points, state).fill_(3.0);
    assert!(!policy.sample(&moved, &noise).allclose(&a, 1e-6, 1e-6, false), "the state is ignored");
    // The encoder's parameters get gradients from the behaviour-cloning loss.
    let actions = Tensor::rand([5, 6], opts) * 2.0 - 1.0;
    let (loss, _) = policy.loss(&obs, &actions, None);
    loss.backward();
    let encoder: Vec<_> = vs.variables().into_iter().filter(|(name, _)| name.starts_with("points.")).collect();
    assert!(encoder.len() >= 12, "encoder parameters: {:?}", encoder.iter().map(|(n, _)| n).collect::<Vec<_>>());
    for (name, v) in encoder {
        assert!(
            v.grad().defined() && v.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{name} has no gradient"
        );
    }
    // Too few numbers for the points named: an error that names the key.
    let err = mvp_actor::check_point_cloud(40, cloud).unwrap_err();
    assert!(err.contains("agent.actor.point_cloud.points") && err.contains("1 to 13"), "{err}");
}
