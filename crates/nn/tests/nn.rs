//! Behaviour tests of the nn building blocks (CPU, one thread).

use mvp_nn::{
    checkpoint, jvp_autograd, polyak_update, Activation, Adam, AdamConfig, EnsembleMlp, ForwardJvp, MatmulPrecision,
    Mlp, MlpConfig, TimeFeatures,
};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};

/// libtorch's RNG is global and tests run on parallel threads: every test holds this lock,
/// so seeded sequences are not interleaved with another test's draws.
static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_thread() -> std::sync::MutexGuard<'static, ()> {
    let guard = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    guard
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let num = (a - b).norm().double_value(&[]);
    let den = b.norm().double_value(&[]).max(1e-12);
    num / den
}

/// f64 MLP with small widths for derivative checks.
fn f64_mlp(seed: i64, layer_norm: bool, activation: Activation) -> (VarStore, Mlp) {
    tch::manual_seed(seed);
    let mut vs = VarStore::new(Device::Cpu);
    let cfg = MlpConfig { hidden: vec![32, 32, 32], activation, layer_norm };
    let mlp = Mlp::new(&vs.root(), 7, 5, &cfg);
    vs.double();
    (vs, mlp)
}

fn central_difference(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, v: &Tensor, eps: f64) -> Tensor {
    (f(&(x + v * eps)) - f(&(x - v * eps))) / (2.0 * eps)
}

fn check_jvp_against_finite_differences(layer_norm: bool, activation: Activation) {
    let _torch = one_thread();
    let (_vs, mlp) = f64_mlp(1, layer_norm, activation);
    let x = Tensor::randn([16, 7], (Kind::Double, Device::Cpu));
    let v = Tensor::randn([16, 7], (Kind::Double, Device::Cpu));
    let fd = central_difference(|x| mlp.forward(x), &x, &v, 1e-5);
    let (y, jv) = mlp.forward_jvp(&x, &v);
    let (_, jv_sg) = mlp.forward_jvp_sg(&x, &v);
    let (_, jv_ad) = jvp_autograd(|x| mlp.forward(x), &x, &v);
    assert!(rel_err(&y, &mlp.forward(&x)) < 1e-12, "primal differs from forward");
    for (name, j) in [("forward-mode", &jv), ("forward-mode sg", &jv_sg), ("double backward", &jv_ad)] {
        let e = rel_err(j, &fd);
        assert!(e < 1e-6, "{name} JVP vs central differences: relative error {e:e}");
    }
}

#[test]
fn jvp_matches_central_differences_with_gelu() {
    check_jvp_against_finite_differences(false, Activation::Gelu);
}

#[test]
fn jvp_matches_central_differences_with_layer_norm() {
    check_jvp_against_finite_differences(true, Activation::Gelu);
}

#[test]
fn jvp_matches_central_differences_with_silu_and_relu() {
    check_jvp_against_finite_differences(true, Activation::Silu);
    check_jvp_against_finite_differences(false, Activation::Relu);
}

#[test]
fn stop_gradient_tangent_carries_no_graph_but_primal_does() {
    let _torch = one_thread();
    let (_vs, mlp) = f64_mlp(2, true, Activation::Gelu);
    let x = Tensor::randn([4, 7], (Kind::Double, Device::Cpu));
    let (y, dy) = mlp.forward_jvp_sg(&x, &x.ones_like());
    assert!(y.requires_grad());
    assert!(!dy.requires_grad());
    let (_, dy_grad) = mlp.forward_jvp(&x, &x.ones_like());
    assert!(dy_grad.requires_grad());
}

#[test]
fn fourier_time_features_have_exact_tangents() {
    let _torch = one_thread();
    let tf = TimeFeatures::Fourier { n: 4, max_freq: 8.0 };
    let t = Tensor::rand([10, 2], (Kind::Double, Device::Cpu));
    let dt = Tensor::randn([10, 2], (Kind::Double, Device::Cpu));
    let (y, dy) = tf.forward_jvp(&t, &dt);
    assert_eq!(y.size(), vec![10, 2 * tf.dim_per_column() as i64]);
    assert!(rel_err(&y, &tf.forward(&t)) < 1e-15);
    let fd = central_difference(|t| tf.forward(t), &t, &dt, 1e-6);
    assert!(rel_err(&dy, &fd) < 1e-6);
    let (raw, draw) = TimeFeatures::Raw.forward_jvp(&t, &dt);
    assert!(raw.equal(&t) && draw.equal(&dt));
}

#[test]
fn ensemble_equals_separate_mlps_with_the_same_weights() {
    let _torch = one_thread();
    tch::manual_seed(3);
    let cfg = MlpConfig { hidden: vec![16, 16], activation: Activation::Gelu, layer_norm: true };
    let (e, din, dout) = (3usize, 6usize, 2usize);
    let evs = VarStore::new(Device::Cpu);
    let ens = EnsembleMlp::new(&evs.root(), e, din, dout, &cfg);
    // Perturb LayerNorm parameters so the comparison covers them too.
    tch::no_grad(|| {
        for (_, mut v) in evs.variables() {
            let noise = v.randn_like() * 0.1;
            let _ = v.g_add_(&noise);
        }
    });
    let ens_vars = evs.variables();
    let x = Tensor::randn([5, din as i64], (Kind::Float, Device::Cpu));
    let xs = Tensor::randn([e as i64, 5, din as i64], (Kind::Float, Device::Cpu));
    let shared = ens.forward(&x);
    let per_member = ens.forward(&xs);
    assert_eq!(shared.size(), vec![e as i64, 5, dout as i64]);
    for m in 0..e {
        let vs = VarStore::new(Device::Cpu);
        let mlp = Mlp::new(&vs.root(), din, dout, &cfg);
        tch::no_grad(|| {
            for (name, mut v) in vs.variables() {
                let src = ens_vars[&name].get(m as i64).reshape(v.size());
                v.copy_(&src);
            }
        });
        let a = mlp.forward(&x);
        let b = mlp.forward(&xs.get(m as i64));
        assert!(rel_err(&shared.get(m as i64), &a) < 1e-6, "member {m}, shared input");
        assert!(rel_err(&per_member.get(m as i64), &b) < 1e-6, "member {m}, own input");
    }
}

#[test]
fn bf16_matmuls_stay_close_to_f32_keep_fp32_weights_and_train() {
    let _torch = one_thread();
    tch::manual_seed(5);
    let cfg = MlpConfig { hidden: vec![64, 64], activation: Activation::Gelu, layer_norm: true };
    let vs = VarStore::new(Device::Cpu);
    let mlp = Mlp::new(&vs.root(), 4, 2, &cfg);
    let ens = EnsembleMlp::new(&(vs.root() / "ens"), 2, 4, 1, &cfg);
    let x = Tensor::randn([32, 4], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([32, 4], (Kind::Float, Device::Cpu));
    let (y32, jv32) = mlp.forward_jvp(&x, &v);
    let e32 = ens.forward(&x);
    let (y16, jv16, e16) = MatmulPrecision::Bf16.scope(|| {
        let (y, jv) = mlp.forward_jvp(&x, &v);
        (y, jv, ens.forward(&x))
    });
    for (name, a, b) in [("mlp", &y16, &y32), ("jvp", &jv16, &jv32), ("ensemble", &e16, &e32)] {
        assert_eq!(a.kind(), Kind::Float, "{name}");
        let e = rel_err(a, b);
        // bf16 keeps 8 significant bits (relative rounding 2^-9 per operand).
        assert!(e > 1e-5 && e < 2e-2, "{name}: relative difference {e:e} between bf16 and f32 matmuls");
    }
    // Training in bf16 reduces the loss, with fp32 weights and gradients.
    let mut adam = Adam::new(&vs, AdamConfig { lr: 3e-3, ..AdamConfig::default() });
    let target = (x.slice(1, 0, 2, 1) * 3.0).cos();
    let loss = |m: &Mlp| (m.forward(&x) - &target).square().mean(Kind::Float);
    let before = loss(&mlp).double_value(&[]);
    MatmulPrecision::Bf16.scope(|| {
        for _ in 0..200 {
            adam.backward_step(&loss(&mlp));
        }
    });
    let after = loss(&mlp).double_value(&[]);
    assert!(after < 0.2 * before, "bf16 training: loss {before:.4} -> {after:.4}");
    for (name, t) in vs.variables() {
        assert_eq!(t.kind(), Kind::Float, "{name} is no longer fp32");
    }
}

#[test]
fn adam_matches_libtorch_adam() {
    let _torch = one_thread();
    let make = || {
        tch::manual_seed(4);
        let vs = VarStore::new(Device::Cpu);
        let mlp = Mlp::new(&vs.root(), 3, 1, &MlpConfig { hidden: vec![8], ..MlpConfig::default() });
        (vs, mlp)
    };
    let (vs_a, mlp_a) = make();
    let (vs_b, mlp_b) = make();
    let mut ours = Adam::new(&vs_a, AdamConfig { lr: 1e-2, ..AdamConfig::default() });
    let mut theirs = nn::OptimizerConfig::build(nn::Adam::default(), &vs_b, 1e-2).unwrap();
    let x = Tensor::randn([32, 3], (Kind::Float, Device::Cpu));
    let y = x.sum_dim_intlist(-1, true, Kind::Float).sin();
    for _ in 0..20 {
        ours.backward_step(&(mlp_a.forward(&x) - &y).square().mean(Kind::Float));
        theirs.backward_step(&(mlp_b.forward(&x) - &y).square().mean(Kind::Float));
    }
    let (a, b) = (vs_a.variables(), vs_b.variables());
    for (name, t) in &a {
        let e = rel_err(t, &b[name]);
        assert!(e < 1e-5, "{name}: relative difference {e:e}");
    }
    assert_eq!(ours.steps(), 20);
}

#[test]
fn polyak_update_interpolates_and_tau_one_copies() {
    let _torch = one_thread();
    tch::manual_seed(5);
    let online = VarStore::new(Device::Cpu);
    let _a = Mlp::new(&online.root(), 3, 2, &MlpConfig { hidden: vec![4], ..MlpConfig::default() });
    let target = VarStore::new(Device::Cpu);
    let _b = Mlp::new(&target.root(), 3, 2, &MlpConfig { hidden: vec![4], ..MlpConfig::default() });
    let before: Vec<(String, Tensor)> =
        checkpoint::varstore_tensors(&target, "").into_iter().map(|(n, t)| (n, t.copy())).collect();
    polyak_update(&target, &online, 0.25);
    let o = online.variables();
    let t = target.variables();
    for (name, old) in &before {
        let expect = old * 0.75 + &o[name] * 0.25;
        assert!(rel_err(&t[name], &expect) < 1e-6, "{name}");
    }
    polyak_update(&target, &online, 1.0);
    for (name, v) in target.variables() {
        assert!(v.equal(&o[&name]), "{name} not copied");
    }
}

/// Trains a small net for steps `from..to` with data drawn from a per-step seed.
fn train_steps(mlp: &Mlp, adam: &mut Adam, from: u64, to: u64) {
    for step in from..to {
        tch::manual_seed(1000 + step as i64);
        let x = Tensor::randn([64, 4], (Kind::Float, Device::Cpu));
        let y = (x.slice(1, 0, 2, 1) * 3.0).cos();
        adam.backward_step(&(mlp.forward(&x) - y).square().mean(Kind::Float));
    }
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Meta {
    step: u64,
}

#[test]
fn resumed_training_equals_uninterrupted_training_bit_for_bit() {
    let _torch = one_thread();
    let cfg = MlpConfig { hidden: vec![32, 32], layer_norm: true, ..MlpConfig::default() };
    let adam_cfg = AdamConfig { lr: 1e-3, max_grad_norm: Some(1.0), ..AdamConfig::default() };
    let k = 25;

    tch::manual_seed(7);
    let vs_full = VarStore::new(Device::Cpu);
    let mlp_full = Mlp::new(&vs_full.root(), 4, 2, &cfg);
    let mut adam_full = Adam::new(&vs_full, adam_cfg.clone());
    train_steps(&mlp_full, &mut adam_full, 0, 2 * k);

    let dir = tempfile::tempdir().unwrap();
    {
        tch::manual_seed(7);
        let vs = VarStore::new(Device::Cpu);
        let mlp = Mlp::new(&vs.root(), 4, 2, &cfg);
        let mut adam = Adam::new(&vs, adam_cfg.clone());
        train_steps(&mlp, &mut adam, 0, k);
        let mut tensors = checkpoint::varstore_tensors(&vs, "actor/");
        let (opt, steps) = adam.state("actor_opt/");
        tensors.extend(opt);
        checkpoint::save(dir.path(), "step_000025", &tensors, &Meta { step: steps }).unwrap();
    }
    // A fresh state: different initial weights, zero moments.
    tch::manual_seed(99);
    let vs = VarStore::new(Device::Cpu);
    let mlp = Mlp::new(&vs.root(), 4, 2, &cfg);
    let mut adam = Adam::new(&vs, adam_cfg);
    let loaded: checkpoint::Loaded<Meta> = checkpoint::load_latest(dir.path()).unwrap();
    loaded.load_varstore(&vs, "actor/").unwrap();
    adam.load_state(&loaded.tensors, "actor_opt/", loaded.meta.step).unwrap();
    train_steps(&mlp, &mut adam, k, 2 * k);

    let full = vs_full.variables();
    for (name, t) in vs.variables() {
        assert!(t.equal(&full[&name]), "parameter {name} differs after resume");
    }
    assert_eq!(adam.steps(), adam_full.steps());
}

/// Metadata whose serialisation fails: a save that breaks after the tensors are written.
struct Unserialisable;
impl serde::Serialize for Unserialisable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("simulated failure during save"))
    }
}

#[test]
fn failed_or_interrupted_save_never_replaces_the_last_good_checkpoint() {
    let _torch = one_thread();
    let dir = tempfile::tempdir().unwrap();
    let good = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    checkpoint::save(dir.path(), "step_1", &[("w".into(), good.shallow_clone())], &Meta { step: 1 }).unwrap();

    // A save that fails midway (tensors written, metadata not).
    let bad = Tensor::from_slice(&[9.0f32, 9.0, 9.0]);
    let err = checkpoint::save(dir.path(), "step_2", &[("w".into(), bad.shallow_clone())], &Unserialisable);
    assert!(err.is_err());
    // Even when it reuses the good checkpoint's name.
    assert!(checkpoint::save(dir.path(), "step_1", &[("w".into(), bad.shallow_clone())], &Unserialisable).is_err());
    // A writer killed mid-save leaves a partial temporary directory behind.
    let partial = dir.path().join(".tmp-step_3-4000000");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("tensors.safetensors"), b"truncated").unwrap();

    let loaded: checkpoint::Loaded<Meta> = checkpoint::load_latest(dir.path()).unwrap();
    assert_eq!(loaded.meta, Meta { step: 1 });
    assert!(loaded.tensors["w"].equal(&good));
    assert!(!dir.path().join("step_2").exists(), "failed save left a checkpoint directory");

    // The next good save succeeds and clears the stale temporary.
    checkpoint::save(dir.path(), "step_4", &[("w".into(), bad.shallow_clone())], &Meta { step: 4 }).unwrap();
    assert!(!partial.exists());
    let loaded: checkpoint::Loaded<Meta> = checkpoint::load_latest(dir.path()).unwrap();
    assert_eq!(loaded.meta, Meta { step: 4 });
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

#[test]
fn a_damaged_checkpoint_is_named_with_its_file_and_the_newest_intact_one() {
    let _torch = one_thread();
    let dir = tempfile::tempdir().unwrap();
    let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
    for step in [10u64, 20, 30] {
        let name = checkpoint::step_name(step);
        checkpoint::save(dir.path(), &name, &[("w".into(), &w * step as f64)], &Meta { step }).unwrap();
    }
    // Overwrite bytes inside the newest checkpoint's tensor data (the file's tail), keeping its size.
    let newest = dir.path().join(checkpoint::step_name(30));
    let path = newest.join("tensors.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    // Safetensors itself reads it without complaint: only the checksum notices.
    assert!(Tensor::read_safetensors(&path).is_ok());
    let err = checkpoint::load_latest::<Meta>(dir.path()).unwrap_err();
    let damaged = err.downcast_ref::<checkpoint::Damaged>().expect("a Damaged error");
    assert_eq!(damaged.file, "tensors.safetensors");
    assert_eq!(damaged.intact.as_deref(), Some("step_0000000020"));
    let text = format!("{err:#}");
    assert!(text.contains("tensors.safetensors") && text.contains("step_0000000020"), "{text}");
    // A missing file is named the same way; the older checkpoint still loads.
    std::fs::remove_file(newest.join("meta.json")).unwrap();
    let loaded: checkpoint::Loaded<Meta> = checkpoint::load(&dir.path().join(checkpoint::step_name(20))).unwrap();
    assert_eq!(loaded.meta, Meta { step: 20 });
    let mid = dir.path().join(checkpoint::step_name(20)).join("meta.json");
    std::fs::write(&mid, b"{\"step\": 21}").unwrap();
    let err = format!("{:#}", checkpoint::load::<Meta>(&dir.path().join(checkpoint::step_name(20))).unwrap_err());
    assert!(err.contains("meta.json") && err.contains("step_0000000010"), "{err}");
}

#[test]
fn loading_names_the_missing_or_misshapen_tensor() {
    let _torch = one_thread();
    let dir = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _m = Mlp::new(&vs.root(), 3, 2, &MlpConfig { hidden: vec![4], ..MlpConfig::default() });
    let mut tensors = checkpoint::varstore_tensors(&vs, "actor/");
    for (name, t) in tensors.iter_mut() {
        if name == "actor/l0.weight" {
            *t = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        }
    }
    checkpoint::save(dir.path(), "step_1", &tensors, &Meta { step: 1 }).unwrap();
    let loaded: checkpoint::Loaded<Meta> = checkpoint::load_latest(dir.path()).unwrap();
    let err = loaded.load_varstore(&vs, "actor/").unwrap_err().to_string();
    assert!(err.contains("actor/l0.weight") && err.contains("shape"), "{err}");
    let err = loaded.load_varstore(&vs, "critic/").unwrap_err().to_string();
    assert!(err.contains("critic/"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = checkpoint::load_latest::<Meta>(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no complete checkpoint"), "{err}");
}

#[test]
fn device_choice_parses_and_rejects_unknown_names() {
    let _torch = one_thread();
    use mvp_nn::DeviceChoice;
    assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
    assert_eq!("cuda:1".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(1));
    let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
    assert!(err.contains("tpu") && err.contains("cpu, cuda"), "{err}");
    if !tch::Cuda::is_available() {
        let err = DeviceChoice::Cuda(0).resolve().unwrap_err().to_string();
        assert!(err.contains("MVP_CUDA=1"), "{err}");
    }
}
