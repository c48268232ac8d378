//! The libtorch-free acting path (`mvp-infer`) computes what the training code computes: the
//! same candidates from the same noise, the same critic scores, the same selected chunk.

use mvp_actor::{ActorConfig, DiffusionConfig, FlowConfig, MvpConfig};
use mvp_agent::config::AgentConfig;
use mvp_agent::Agent;
use mvp_infer::Precision;
use mvp_nn::MlpConfig;
use tch::{Device, Kind, Tensor};

const S: usize = 37;
const A: usize = 5;

fn agent(actor: ActorConfig) -> Agent {
    tch::set_num_threads(1);
    tch::manual_seed(7);
    let mut config = AgentConfig { actor, ..AgentConfig::default() };
    config.critic.network.hidden = vec![256; 3];
    let mut agent = Agent::new(S, A, &config, Device::Cpu);
    // A few updates so the weights are not at their initial values (biases, LayerNorm).
    let batch = mvp_replay::ChunkBatch::new(16, 5, S, A);
    let mut b = batch;
    for (i, x) in b.observations.iter_mut().enumerate() {
        *x = ((i * 31) % 17) as f32 / 17.0 - 0.5;
    }
    b.next_observations.copy_from_slice(&b.observations);
    for (i, x) in b.actions.iter_mut().enumerate() {
        *x = ((i * 13) % 19) as f32 / 9.5 - 1.0;
    }
    b.rewards.fill(-1.0);
    b.masks.fill(1.0);
    b.valid.fill(1.0);
    let tb = mvp_agent::TensorBatch::from_chunks(&b, Device::Cpu);
    for _ in 0..3 {
        agent.update(&tb).unwrap();
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
    let a = agent(ActorConfig::Mvp(MvpConfig { network: net(), ..MvpConfig::default() }));
    compare(&a, Precision::F32, 1e-4);
    if mvp_infer::has_avx512_bf16() {
        compare(&a, Precision::Bf16, 5e-2);
    }
}

#[test]
fn native_multi_step_mvp_and_qc_flow_match_the_training_code() {
    let a = agent(ActorConfig::Mvp(MvpConfig { network: net(), sampling_steps: 3, ..MvpConfig::default() }));
    compare(&a, Precision::F32, 1e-4);
    let a = agent(ActorConfig::Flow(FlowConfig { network: net(), steps: 10, ..FlowConfig::default() }));
    compare(&a, Precision::F32, 1e-4);
}

#[test]
fn actors_without_a_native_path_say_so() {
    let a = agent(ActorConfig::Diffusion(DiffusionConfig { network: net(), steps: 5, ..DiffusionConfig::default() }));
    let err = a.native_policy(Precision::F32, 0).unwrap_err().to_string();
    assert!(err.contains("no native acting path"), "{err}");
}
