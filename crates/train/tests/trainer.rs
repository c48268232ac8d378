//! Trainer behaviour: exact resume, logging, bad input, non-finite losses (CPU, one thread).

mod common;

use std::path::Path;

use common::{latest_checkpoint, lock, tiny};
use mvp_agent::TrainConfig;
use mvp_train::Trainer;
#[test]
fn resumed_run_equals_uninterrupted_run_bit_for_bit() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let full = Trainer::new(tiny(dir.path(), "full", &[])).unwrap().run().unwrap();
    // Stop at the end of the offline phase (step 40: the environment has not stepped yet), and in
    // the middle of the online phase (step 57 = 17 environment steps, inside a chunk).
    for stop in [40, 57] {
        let name = format!("part{stop}");
        let part =
            Trainer::new(tiny(dir.path(), &name, &[&format!("schedule.stop_after={stop}")])).unwrap().run().unwrap();
        assert_eq!(part.steps, stop);
        let resumed = Trainer::resume(&part.run_dir, &["schedule.stop_after=0".into()]).unwrap().run().unwrap();
        assert_eq!(resumed.steps, full.steps);

        let (a, b) = (latest_checkpoint(&full.run_dir), latest_checkpoint(&resumed.run_dir));
        let ta: mvp_nn::checkpoint::Loaded<serde_json::Value> = mvp_nn::checkpoint::load(&a).unwrap();
        let tb: mvp_nn::checkpoint::Loaded<serde_json::Value> = mvp_nn::checkpoint::load(&b).unwrap();
        assert_eq!(ta.tensors.len(), tb.tensors.len());
        for (name, t) in &ta.tensors {
            assert!(
                t.equal(&tb.tensors[name]),
                "{name} differs between the uninterrupted run and the one resumed at {stop}"
            );
        }
        let (ba, bb) = (std::fs::read(a.join("buffer.bin")).unwrap(), std::fs::read(b.join("buffer.bin")).unwrap());
        assert!(ba == bb, "replay buffers differ (resumed at {stop})");
        assert_eq!(full.eval, resumed.eval);
        assert_eq!(full.curve, resumed.curve, "learning curves differ (resumed at {stop})");
    }
}

/// Evaluations on a background thread (the default where the native engine runs) give the
/// learning curve of evaluations that stop training, and a run stopped while one was running
/// repeats it when resumed.
#[test]
fn background_evaluations_equal_foreground_ones_and_survive_a_resume() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let every20 = [
        "schedule.eval_interval=20",
        "schedule.eval_episodes=50",
        "schedule.checkpoint_interval=20",
        "schedule.keep_checkpoints=10",
    ];
    let with = |extra: &[&'static str]| every20.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>();
    let fg = Trainer::new(tiny(dir.path(), "fg", &with(&["schedule.eval_background=false"]))).unwrap().run().unwrap();
    let bg = Trainer::new(tiny(dir.path(), "bg", &with(&[]))).unwrap().run().unwrap();
    assert_eq!(bg.curve.iter().map(|c| c.0).collect::<Vec<_>>(), [20, 40, 60, 80, 100]);
    assert_eq!(fg.curve, bg.curve, "background and foreground evaluations differ");

    // The checkpoint of step 40 was written while the evaluation of step 40 ran.
    let ckpt = bg.run_dir.join("checkpoints").join("step_0000000040");
    let meta: mvp_nn::checkpoint::Loaded<mvp_train::Progress> = mvp_nn::checkpoint::load(&ckpt).unwrap();
    assert_eq!(meta.meta.pending_eval, Some(40));
    assert_eq!(meta.meta.eval_history.iter().map(|c| c.0).collect::<Vec<_>>(), [20]);
    // A copy of the run that stopped there resumes with that evaluation first.
    let stopped_at_40 = |name: &str| {
        let stopped = dir.path().join(name);
        std::fs::create_dir_all(stopped.join("checkpoints")).unwrap();
        for f in ["config.toml", "run.json"] {
            std::fs::copy(bg.run_dir.join(f), stopped.join(f)).unwrap();
        }
        let copy = stopped.join("checkpoints").join("step_0000000040");
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(&ckpt).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
        }
        std::fs::write(stopped.join("checkpoints").join("latest"), "step_0000000040").unwrap();
        stopped
    };
    let resumed = Trainer::resume(&stopped_at_40("stopped"), &[]).unwrap().run().unwrap();
    assert_eq!(resumed.curve, bg.curve, "the resumed run's learning curve differs");

    // Interrupted one step later, while the repeated evaluation of step 40 still runs: the
    // checkpoint of step 41 keeps step 40's networks, and the next resume evaluates them.
    let twice = stopped_at_40("twice");
    let mut t = Trainer::resume(&twice, &[]).unwrap();
    t.stop_handle().store(true, std::sync::atomic::Ordering::SeqCst);
    let cut = t.run().unwrap();
    assert!(cut.interrupted && cut.steps == 41, "{cut:?}");
    let ckpt41 = twice.join("checkpoints").join("step_0000000041");
    let meta: mvp_nn::checkpoint::Loaded<mvp_train::Progress> = mvp_nn::checkpoint::load(&ckpt41).unwrap();
    assert_eq!(meta.meta.pending_eval, Some(40));
    assert!(ckpt41.join("pending_eval").join("policy.json").exists());
    drop(t);
    let resumed = Trainer::resume(&twice, &[]).unwrap().run().unwrap();
    assert_eq!(resumed.curve, bg.curve, "an evaluation cut by the interrupt is lost or differs");
}

/// `env.async_collect`: the collector's thread steps while the learner updates, yet the
/// policies it acts with are fixed by step, so a run repeats itself bit for bit; stopped in the
/// online phase, a run resumes with new episodes.
#[test]
fn asynchronous_collection_repeats_itself_and_resumes_with_new_episodes() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let a = Trainer::new(tiny(dir.path(), "a", &["env.async_collect=true"])).unwrap().run().unwrap();
    let b = Trainer::new(tiny(dir.path(), "b", &["env.async_collect=true"])).unwrap().run().unwrap();
    let (ca, cb) = (latest_checkpoint(&a.run_dir), latest_checkpoint(&b.run_dir));
    let (ta, tb): (mvp_nn::checkpoint::Loaded<serde_json::Value>, mvp_nn::checkpoint::Loaded<serde_json::Value>) =
        (mvp_nn::checkpoint::load(&ca).unwrap(), mvp_nn::checkpoint::load(&cb).unwrap());
    for (name, t) in &ta.tensors {
        assert!(t.equal(&tb.tensors[name]), "{name} differs between two asynchronous runs");
    }
    let (ba, bb) = (std::fs::read(ca.join("buffer.bin")).unwrap(), std::fs::read(cb.join("buffer.bin")).unwrap());
    assert!(ba == bb, "the replay buffers of two asynchronous runs differ");
    assert_eq!(ta.meta["online_rows"], 60, "every online step stored one transition");

    let part = Trainer::new(tiny(dir.path(), "part", &["env.async_collect=true", "schedule.stop_after=57"]))
        .unwrap()
        .run()
        .unwrap();
    let meta: mvp_nn::checkpoint::Loaded<mvp_train::Progress> =
        mvp_nn::checkpoint::load(&latest_checkpoint(&part.run_dir)).unwrap();
    assert!(meta.meta.collector.is_none(), "the thread's episodes are not in the checkpoint");
    let resumed = Trainer::resume(&part.run_dir, &["schedule.stop_after=0".into()]).unwrap().run().unwrap();
    assert_eq!(resumed.steps, a.steps);
}

/// A byte overwritten inside the latest checkpoint's tensors stops the resume with an error that
/// names the file and the newest intact checkpoint; resuming from that one works.
#[test]
fn a_damaged_checkpoint_is_refused_and_the_previous_one_resumes() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let every20 = ["schedule.checkpoint_interval=20", "schedule.keep_checkpoints=5", "schedule.stop_after=60"];
    let part = Trainer::new(tiny(dir.path(), "damaged", &every20)).unwrap().run().unwrap();
    let latest = latest_checkpoint(&part.run_dir);
    assert!(latest.ends_with("step_0000000060"));
    let path = latest.join("tensors.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = format!("{:#}", Trainer::resume(&part.run_dir, &[]).err().expect("a damaged checkpoint is refused"));
    assert!(err.contains("tensors.safetensors") && err.contains("step_0000000040"), "{err}");
    let resumed =
        Trainer::resume_from(&part.run_dir, &["schedule.stop_after=0".into()], Some(40)).unwrap().run().unwrap();
    assert_eq!(resumed.steps, 100);
}

#[test]
fn resuming_with_overrides_records_them_in_the_run_config() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let part = Trainer::new(tiny(dir.path(), "fork", &["schedule.stop_after=40"])).unwrap().run().unwrap();
    let sets = vec!["schedule.stop_after=50".to_string(), "schedule.utd=2".to_string()];
    Trainer::resume(&part.run_dir, &sets).unwrap().record_overrides(&sets).unwrap();
    let text = std::fs::read_to_string(part.run_dir.join("config.toml")).unwrap();
    let header = text.lines().next().unwrap();
    assert!(header.contains("from step 40 on with --set schedule.stop_after=50 --set schedule.utd=2"), "{header}");
    // A plain resume continues with them: it runs to the recorded stop, with 2 updates per step.
    let summary = Trainer::resume(&part.run_dir, &[]).unwrap().run().unwrap();
    assert_eq!(summary.steps, 50);
    let config = TrainConfig::load(Some(&part.run_dir.join("config.toml")), &[]).unwrap();
    assert_eq!(config.schedule.utd, 2);
}

#[test]
fn tensorboard_file_of_a_run_holds_the_logged_scalars() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let s = Trainer::new(tiny(dir.path(), "tb", &[])).unwrap().run().unwrap();
    let events = mvp_logging::read_scalars_in_dir(s.run_dir.join("tb")).unwrap();
    let jsonl = std::fs::read_to_string(s.run_dir.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for tag in ["critic/loss", "actor/mf_loss", "actor/ivc_loss", "eval/success", "time/sps"] {
        let from_tb: Vec<(i64, f32)> = events.iter().filter(|e| e.tag == tag).map(|e| (e.step, e.value)).collect();
        let from_jsonl: Vec<(i64, f32)> =
            rows.iter().filter_map(|r| Some((r["step"].as_i64()?, r.get(tag)?.as_f64()? as f32))).collect();
        assert!(!from_tb.is_empty(), "no `{tag}` in the event file");
        assert_eq!(from_tb, from_jsonl, "`{tag}` differs between TensorBoard and JSONL");
    }
    for f in ["config.toml", "run.json", "metrics.csv"] {
        assert!(s.run_dir.join(f).exists(), "{f} missing from the run directory");
    }
    let config = std::fs::read_to_string(s.run_dir.join("config.toml")).unwrap();
    assert!(config.contains("git revision") && config.contains("num_samples = 4"));
}

#[test]
fn every_shipped_config_loads_and_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut dirs = vec![root];
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                TrainConfig::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} configs found");
}

#[test]
fn config_errors_name_the_key_and_the_allowed_values() {
    let err = TrainConfig::load(None, &["agent.num_sample=3".into()]).unwrap_err().to_string();
    assert!(err.contains("agent") && err.contains("num_sample") && err.contains("num_samples"), "{err}");
    let err = TrainConfig::load(None, &["agent.horizon=0".into()]).unwrap_err().to_string();
    assert!(err.contains("agent.horizon") && err.contains("≥ 1"), "{err}");
    let err = TrainConfig::load(None, &["agent.actor.kind=\"gan\"".into()]).unwrap_err().to_string();
    assert!(err.contains("agent.actor") && err.contains("mvp"), "{err}");
    let err = TrainConfig::load(None, &["runtime.device=\"tpu\"".into()]).unwrap_err().to_string();
    assert!(err.contains("runtime.device") && err.contains("cuda"), "{err}");
    let err = TrainConfig::load(None, &["agent.imitation=true".into()]).unwrap_err().to_string();
    assert!(err.contains("agent.num_samples") && err.contains("imitation"), "{err}");
    let imitation = ["agent.imitation=true", "agent.num_samples=1"].map(String::from);
    let err = TrainConfig::load(None, &imitation).unwrap_err().to_string();
    assert!(err.contains("schedule.online_steps"), "{err}");
}

#[test]
fn a_dataset_for_another_environment_is_refused_with_both_shapes() {
    let (mut data, _) = mvp_data::generate_dataset("branch-reach-v0", 2, 0.1, 0).unwrap();
    let mut spec = mvp_envs::make_native("branch-reach-v0").unwrap().spec().clone();
    spec.obs_dim = 37;
    let err = mvp_data::check_dataset(&mut data, &spec, &Default::default()).unwrap_err().to_string();
    assert!(err.contains(&format!("[{}, 2]", data.len())) && err.contains("[37]"), "{err}");
}

#[test]
fn bad_values_in_a_dataset_are_named_with_file_key_episode_and_row() {
    let (clean, _) = mvp_data::generate_dataset("branch-reach-v0", 3, 0.1, 0).unwrap();
    let spec = mvp_envs::make_native("branch-reach-v0").unwrap().spec().clone();
    let config = mvp_data::DataConfig { path: "lift.hdf5".into(), ..Default::default() };
    let second_episode = clean.terminals.iter().position(|&t| t != 0.0).unwrap() + 1;
    // One NaN in one observation of the second episode.
    let mut data = clean.clone();
    data.observations[(second_episode + 2) * data.obs_dim + 1] = f32::NAN;
    let err = mvp_data::check_dataset(&mut data, &spec, &config).unwrap_err().to_string();
    let want =
        format!("`observations` holds 1 non-finite value(s), the first in episode 1, row {}", second_episode + 2);
    assert!(err.starts_with("lift.hdf5: ") && err.contains(&want), "{err}");
    // An action of 50.0: clipped and counted by default, refused on request.
    let mut data = clean.clone();
    data.actions[3 * data.act_dim] = 50.0;
    mvp_data::check_dataset(&mut data, &spec, &config).unwrap();
    assert_eq!(data.actions[3 * data.act_dim], spec.action_high[0]);
    let mut data = clean.clone();
    data.actions[3 * data.act_dim] = 50.0;
    let refuse = mvp_data::DataConfig { out_of_range_actions: mvp_data::OutOfRangeActions::Refuse, ..config.clone() };
    let err = mvp_data::check_dataset(&mut data, &spec, &refuse).unwrap_err().to_string();
    assert!(err.contains("1 action values lie outside the action space") && err.contains("row 3"), "{err}");
    // A last episode without its terminal row ends as a truncation.
    let mut data = clean;
    let last = data.terminals.len() - 1;
    data.terminals[last] = 0.0;
    mvp_data::check_dataset(&mut data, &spec, &config).unwrap();
    assert_eq!(data.terminals[last], 1.0);
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let good = Trainer::new(tiny(dir.path(), "nan", &["schedule.stop_after=20"])).unwrap().run().unwrap();
    let before = latest_checkpoint(&good.run_dir);
    // Continue with a learning rate that makes the critic diverge at once.
    let mut t = Trainer::resume(
        &good.run_dir,
        &["schedule.stop_after=0".into(), "agent.critic_optim.lr=1e38".into(), "schedule.checkpoint_interval=1".into()],
    )
    .unwrap();
    let err = t.run().unwrap_err().to_string();
    assert!(err.contains("non-finite"), "{err}");
    // Checkpoints written before the divergence showed stay; none holds a non-finite value.
    let last = latest_checkpoint(&good.run_dir);
    assert!(last >= before);
    let loaded: mvp_nn::checkpoint::Loaded<serde_json::Value> = mvp_nn::checkpoint::load(&last).unwrap();
    for (name, v) in &loaded.tensors {
        assert!(v.isfinite().all().int64_value(&[]) == 1, "checkpoint tensor {name} is not finite");
    }
}

#[test]
fn pure_online_runs_and_qc_and_diffusion_actors_share_the_loop() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    // From scratch: no dataset, random warm-up actions, then learning online.
    let online = tiny(dir.path(), "online", &["data.demo_episodes=0", "schedule.offline_steps=0"]);
    let s = Trainer::new(online).unwrap().run().unwrap();
    assert_eq!(s.steps, 60);
    assert!(s.run_dir.join("learning_curve.png").exists());
    // QC (flow, K = 10) and a diffusion actor run through the same trainer.
    for (name, kind) in [("qc", "agent.actor.kind=\"flow\""), ("diffusion", "agent.actor.kind=\"diffusion\"")] {
        let cfg = tiny(dir.path(), name, &[kind, "schedule.online_steps=10"]);
        let s = Trainer::new(cfg).unwrap().run().unwrap();
        assert_eq!(s.steps, 50, "{name}");
        assert!(s.eval.is_some());
    }
    // Offline steps without any dataset are a configuration error that says why.
    let cfg = tiny(dir.path(), "bad", &["data.demo_episodes=0"]);
    let err = Trainer::new(cfg).err().expect("offline steps without a dataset must fail").to_string();
    assert!(err.contains("offline_steps") && err.contains("no dataset"), "{err}");
}

#[test]
fn sparse_option_maps_partial_progress_to_minus_one() {
    assert_eq!([-3.0f32, -1.0, -0.5, 0.0].map(mvp_envs::sparse_reward), [-1.0, -1.0, -1.0, 0.0]);
}

#[test]
fn offline_candidate_count_and_online_levers_take_effect_by_phase() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let levers = [
        "agent.offline_num_samples=1",
        "agent.selected_target_fraction=0.5",
        "schedule.online_fraction=0.5",
        "schedule.eval_interval=40",
    ];
    let s = Trainer::new(tiny(dir.path(), "levers", &levers)).unwrap().run().unwrap();
    let jsonl = std::fs::read_to_string(s.run_dir.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps_with = |tag: &str| -> Vec<u64> {
        rows.iter().filter(|r| r.get(tag).is_some()).map(|r| r["step"].as_u64().unwrap()).collect()
    };
    // Selection diagnostics exist only where more than one candidate is scored: online.
    let selected = steps_with("select/q_selected");
    assert!(!selected.is_empty() && selected.iter().all(|&s| s > 40), "select/* logged at {selected:?}");
    assert!(steps_with("critic/loss").iter().any(|&s| s <= 40), "offline updates log the critic");
    for tag in ["select/score_std", "select/candidate_std"] {
        assert_eq!(steps_with(tag), selected, "{tag}");
    }
    // The comparison point, the stored chunks as selection scores them, is logged in both phases.
    assert_eq!(steps_with("critic/q_data"), steps_with("critic/loss"));
    // The learning curve: the end of the offline phase and the end of the run.
    assert_eq!(s.curve.iter().map(|p| p.0).collect::<Vec<_>>(), vec![40, 80, 100]);
    // A bad share names its key.
    let err = TrainConfig::load(None, &["agent.selected_target_fraction=1.5".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("agent.selected_target_fraction"), "{err:#}");
}
