//! Behaviour tests of the critic ensemble.

use mvp_critic::{Aggregate, AggregateExt, Critic, CriticConfig};
use mvp_nn::MlpConfig;
use tch::{Device, Kind, Tensor};

fn small() -> CriticConfig {
    CriticConfig {
        network: MlpConfig { hidden: vec![16, 16], layer_norm: true, ..MlpConfig::default() },
        ensemble: 3,
        ..CriticConfig::default()
    }
}

#[test]
fn target_starts_equal_to_online_and_follows_by_tau() {
    tch::set_num_threads(1);
    let mut c = Critic::new(Device::Cpu, 4, 6, CriticConfig { tau: 0.5, ..small() });
    let obs = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
    let a = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
    assert!(c.q(&obs, &a).equal(&c.q_target(&obs, &a)));
    assert_eq!(c.q(&obs, &a).size(), vec![3, 5]);
    // One gradient step moves the online critic away; the target stays until soft_update.
    let mut opt = mvp_nn::Adam::new(&c.vs, mvp_nn::AdamConfig { lr: 1e-2, ..Default::default() });
    let (loss, _) = c.td_loss(
        &obs,
        &a,
        &Tensor::ones([5], (Kind::Float, Device::Cpu)),
        &Tensor::ones([5], (Kind::Float, Device::Cpu)),
    );
    let before = c.q_target(&obs, &a);
    opt.backward_step(&loss);
    assert!(c.q_target(&obs, &a).equal(&before), "target changed without soft_update");
    assert!(!c.q(&obs, &a).equal(&before));
    let t_vars = c.target_vs.variables();
    let old: Vec<(String, Tensor)> = t_vars.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
    c.soft_update();
    let online = c.vs.variables();
    for (name, o) in old {
        let expect = o * 0.5 + &online[&name] * 0.5;
        let got = &c.target_vs.variables()[&name];
        assert!((got - expect).abs().max().double_value(&[]) < 1e-6, "{name}");
    }
    for (name, t) in c.target_vs.variables() {
        assert!(!t.requires_grad(), "target parameter {name} must not receive gradients");
    }
}

#[test]
fn td_target_discounts_by_gamma_to_the_horizon_and_respects_the_mask() {
    tch::set_num_threads(1);
    let c = Critic::new(Device::Cpu, 2, 2, CriticConfig { gamma: 0.9, ..small() });
    let r = Tensor::from_slice(&[-1.0f32, -2.0]);
    let m = Tensor::from_slice(&[1.0f32, 0.0]);
    let v = Tensor::from_slice(&[10.0f32, 10.0]);
    let y = c.td_target(&r, &m, &v, 3);
    let y: Vec<f32> = Vec::try_from(&y).unwrap();
    assert!((y[0] - (-1.0 + 0.729 * 10.0)).abs() < 1e-5);
    assert_eq!(y[1], -2.0);
}

#[test]
fn samples_whose_last_step_is_invalid_do_not_count() {
    tch::set_num_threads(1);
    let c = Critic::new(Device::Cpu, 2, 2, small());
    let obs = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
    let a = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
    let y1 = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0]);
    let y2 = Tensor::from_slice(&[0.0f32, 0.0, 100.0, -100.0]);
    let valid = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 0.0]);
    let (l1, _) = c.td_loss(&obs, &a, &y1, &valid);
    let (l2, _) = c.td_loss(&obs, &a, &y2, &valid);
    assert_eq!(l1.double_value(&[]), l2.double_value(&[]));
}

#[test]
fn aggregate_mean_and_min() {
    tch::set_num_threads(1);
    let q = Tensor::from_slice(&[1.0f32, 4.0, 3.0, 2.0]).view([2, 2]);
    assert_eq!(Vec::<f32>::try_from(&Aggregate::Mean.apply(&q)).unwrap(), vec![2.0, 3.0]);
    assert_eq!(Vec::<f32>::try_from(&Aggregate::Min.apply(&q)).unwrap(), vec![1.0, 2.0]);
    let err = toml::from_str::<CriticConfig>("aggregate = \"max\"").unwrap_err().to_string();
    assert!(err.contains("mean") && err.contains("min"), "{err}");
}
