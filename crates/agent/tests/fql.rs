//! FQL in the agent: the one-step policy is trained through the critic, the critic only by
//! its TD loss, and the agent acts with one call of the one-step policy.

use mvp_actor::{ActorConfig, FqlConfig};
use mvp_agent::config::AgentConfig;
use mvp_agent::Agent;
use mvp_nn::MlpConfig;
use tch::{Device, Kind, Tensor};

const S: usize = 6;
const A: usize = 2;

fn batch() -> mvp_replay::ChunkBatch {
    let mut b = mvp_replay::ChunkBatch::new(32, 5, S, A);
    mvp_agent::agent::fill_synthetic(&mut b);
    b
}

fn fql_agent() -> Agent {
    tch::set_num_threads(1);
    tch::manual_seed(5);
    let net = MlpConfig { hidden: vec![32; 2], ..MlpConfig::default() };
    let config = AgentConfig {
        num_samples: 1,
        actor: ActorConfig::Fql(FqlConfig { network: net.clone(), flow_steps: 4, alpha: 10.0, ..FqlConfig::default() }),
        ..AgentConfig::default()
    };
    Agent::new(S, A, &config, Device::Cpu).unwrap()
}

#[test]
fn fql_updates_report_their_terms_and_leave_no_gradient_in_the_critic() {
    let mut agent = fql_agent();
    let b = batch();
    for _ in 0..3 {
        let metrics = agent.update(&b).unwrap();
        let value = |name: &str| {
            metrics
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.double_value(&[]))
                .unwrap_or_else(|| panic!("{name}"))
        };
        let total = value("actor/bc_loss") - value("actor/q_policy");
        assert!((value("actor/loss") - total).abs() < 1e-4, "loss = flow + α·distill − Q");
        assert!(value("actor/distill_loss").is_finite() && value("critic/loss").is_finite());
    }
    let (state, _) = agent.state();
    for (name, t) in state.iter().filter(|(n, _)| n.starts_with("critic/")) {
        let g = t.grad();
        assert!(!g.defined() || g.abs().sum(Kind::Float).double_value(&[]) == 0.0, "{name} keeps a gradient");
    }
}

#[test]
fn fql_acts_with_one_clipped_chunk_per_observation() {
    let agent = fql_agent();
    let obs = Tensor::randn([3, S as i64], (Kind::Float, Device::Cpu));
    let a = agent.sample_actions(&obs, 1);
    assert_eq!(a.size(), [3, (5 * A) as i64]);
    assert!(a.abs().max().double_value(&[]) <= 1.0);
}
