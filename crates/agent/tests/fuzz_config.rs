//! The config parser driven with malformed input: `--set` overrides of real and made-up keys
//! with values of every type, and TOML files of random text. Each is accepted as a config
//! that validates or refused with an error; nothing panics.

use mvp_agent::TrainConfig;
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "run.seed",
    "env.name",
    "env.num_envs",
    "env.obs_history",
    "agent.horizon",
    "agent.num_samples",
    "agent.batch_size",
    "agent.actor.kind",
    "agent.actor.network.hidden",
    "agent.critic.ensemble",
    "agent.critic.gamma",
    "agent.select_engine",
    "schedule.offline_steps",
    "schedule.eval_episodes",
    "schedule.final_eval_episodes",
    "data.out_of_range_actions",
    "engine.isa",
    "runtime.matmul",
    "agent",
    "agent.actor",
    "no.such.key",
    "",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        Just("-1".to_string()),
        Just("\"mvp\"".to_string()),
        Just("[256, -3, 1e40]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("true".to_string()),
        "[ -~]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn overrides_of_any_key_and_value_never_panic(
        sets in prop::collection::vec((0..KEYS.len(), value()), 1..4),
    ) {
        let overrides: Vec<String> = sets.into_iter().map(|(k, v)| format!("{}={v}", KEYS[k])).collect();
        if let Ok(c) = TrainConfig::load(None, &overrides) {
            prop_assert!(c.validate().is_ok());
        }
    }

    #[test]
    fn config_files_of_random_text_never_panic(text in "[ -~\\n]{0,200}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let _ = TrainConfig::load(Some(&path), &[]);
    }
}
