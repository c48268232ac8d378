//! Trainer behaviour: exact resume, logging, bad input, non-finite losses (CPU, one thread).

use std::path::Path;

use mvp_agent::TrainConfig;
use mvp_train::Trainer;

/// libtorch's RNG is global: runs in one test process must not interleave.
static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tiny offline-to-online run on the native task.
fn tiny(out: &Path, name: &str, extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = [
        "agent.batch_size=32",
        "agent.num_samples=4",
        "agent.actor.kind=\"mvp\"",
        "agent.actor.network.hidden=[32, 32]",
        "agent.critic.network.hidden=[32, 32]",
        "data.demo_episodes=20",
        "data.demo_noise=1.0",
        "schedule.offline_steps=40",
        "schedule.online_steps=60",
        "schedule.warmup_steps=10",
        "schedule.eval_interval=0",
        "schedule.eval_episodes=2",
        "schedule.log_interval=5",
        "schedule.checkpoint_interval=0",
        "schedule.buffer_capacity=5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.push(format!("run.out_dir=\"{}\"", out.display()));
    o.push(format!("run.name=\"{name}\""));
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &o).unwrap()
}

fn latest_checkpoint(run: &Path) -> std::path::PathBuf {
    let root = run.join("checkpoints");
    root.join(mvp_nn::checkpoint::latest(&root).expect("a checkpoint"))
}

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
    let stopped = dir.path().join("stopped");
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
    let resumed = Trainer::resume(&stopped, &[]).unwrap().run().unwrap();
    assert_eq!(resumed.curve, bg.curve, "the resumed run's learning curve differs");
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
    let (data, _) = mvp_data::generate_dataset("branch-reach-v0", 2, 0.1, 0).unwrap();
    let mut spec = mvp_envs::make_native("branch-reach-v0").unwrap().spec().clone();
    spec.obs_dim = 37;
    let err = mvp_data::check_dataset(&data, &spec).unwrap_err().to_string();
    assert!(err.contains(&format!("[{}, 2]", data.len())) && err.contains("[37]"), "{err}");
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
fn pure_online_training_runs_on_a_real_ogbench_environment() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let env = "cube-single-play-singletask-task1-v0";
    let name = format!("env.name=\"{env}\"");
    let cfg = tiny(
        dir.path(),
        "ogbench",
        &[
            &name,
            "data.demo_episodes=0",
            "schedule.offline_steps=0",
            "schedule.online_steps=30",
            "schedule.eval_episodes=3",
            "env.eval_envs=2",
            "env.eval_workers=2",
            "schedule.video_episodes=1",
            "schedule.video_size=[32, 24]",
        ],
    );
    let s = Trainer::new(cfg).unwrap().run().unwrap();
    assert_eq!(s.steps, 30);
    // The final evaluation recorded one video, as a GIF and as a strip in TensorBoard.
    let run = s.run_dir.clone();
    let (frames, w, h) = gif_frames(&run.join("videos/step_0000000030_ep0.gif"));
    assert!(frames >= 2 && (w, h) == (32, 24), "{frames} frames of {w} × {h}");
    let tb = std::fs::read_dir(run.join("tb")).unwrap().next().unwrap().unwrap().path();
    let events = std::fs::read(tb).unwrap();
    assert!(events.windows(15).any(|w| w == b"video/episode_0"), "no image summary in the event file");
    // Three evaluation episodes over two environments in two worker processes.
    let e = s.eval.unwrap();
    assert_eq!(e.episodes, 3);
    assert!(e.mean_return <= 0.0 && e.mean_length >= 1.0, "{e:?}");
    // Asking for a demonstrator dataset on OGBench says what to do instead.
    let cfg = tiny(dir.path(), "ogbench-offline", &[&name]);
    let err = Trainer::new(cfg).err().expect("no dataset for OGBench yet").to_string();
    assert!(err.contains("data.demo_episodes=0"), "{err}");
}

/// Frames, width and height of a GIF file.
fn gif_frames(path: &Path) -> (usize, u16, u16) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut decoder = gif::DecodeOptions::new().read_info(file).unwrap();
    let (w, h) = (decoder.width(), decoder.height());
    let mut n = 0;
    while decoder.read_next_frame().unwrap().is_some() {
        n += 1;
    }
    (n, w, h)
}

/// Videos of real OGBench and robomimic episodes, rendered offscreen (MuJoCo, EGL): one frame
/// for the first observation and one per environment step. Zero actions solve neither task, so
/// each episode runs to its time limit.
#[test]
fn videos_of_real_ogbench_and_robomimic_episodes_have_a_frame_per_step() {
    for env in ["cube-single-play-singletask-task1-v0", "robomimic/lift"] {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = mvp_rollout::make_pool(env, 1, 1, 0, 1).unwrap();
        let (limit, action_dim) = (pool.spec().max_episode_steps, pool.spec().action_dim);
        pool.close().unwrap();
        let h = 5;
        let mut still = |_: &[f32], k: usize| -> anyhow::Result<Vec<f32>> { Ok(vec![0.0; k * h * action_dim]) };
        let videos =
            mvp_train::eval::record_videos(env, 1, [64, 48], (1, h, 7), h, &mut still, dir.path(), "test").unwrap();
        assert_eq!(videos.len(), 1);
        let v = &videos[0];
        assert!(!v.success && v.length == limit, "{env}: {v:?}");
        assert_eq!(v.path, dir.path().join("test_ep0.gif"));
        assert_eq!(gif_frames(&v.path), (limit + 1, 64, 48), "{env}");
        // The strip shows eight frames, and the scene is drawn (not a blank image).
        assert_eq!(v.strip.len(), 8 * 64 * 48 * 3);
        let mean = v.strip.iter().map(|&b| b as f64).sum::<f64>() / v.strip.len() as f64;
        assert!(mean > 5.0 && mean < 250.0, "{env}: mean pixel {mean}");
    }
    // A native environment says that it cannot render.
    let mut still = |_: &[f32], k: usize| -> anyhow::Result<Vec<f32>> { Ok(vec![0.0; k * 10]) };
    let dir = tempfile::tempdir().unwrap();
    let err = mvp_train::eval::record_videos("branch-reach-v0", 1, [64, 48], (1, 5, 0), 5, &mut still, dir.path(), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not render"), "{err}");
}

/// Pids of this process's children that run the Python env worker, lowest first.
fn env_worker_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (after the parenthesised command) is the parent pid.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).unwrap_or("");
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == me && String::from_utf8_lossy(&cmd).contains("mvp_envs.worker")
        })
        .collect();
    pids.sort();
    pids
}

#[test]
fn killed_env_worker_is_restarted_and_no_stored_transition_joins_two_episodes() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let name = "env.name=\"cube-single-play-singletask-task1-v0\"";
    let cfg = tiny(
        dir.path(),
        "fault",
        &[
            name,
            "data.demo_episodes=0",
            "schedule.offline_steps=0",
            "schedule.online_steps=3000",
            "schedule.warmup_steps=1000",
            "schedule.eval_episodes=1",
        ],
    );
    let before = env_worker_children();
    let mut trainer = Trainer::new(cfg).unwrap();
    // The training environment's worker starts first, the evaluation one second.
    let workers: Vec<i32> = env_worker_children().into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(workers.len(), 2, "expected a training and an evaluation worker: {workers:?}");
    let victim = workers[0];
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        // SAFETY: sending a signal to a child process of ours.
        unsafe { libc::kill(victim, libc::SIGKILL) }
    });
    let summary = trainer.run().unwrap();
    assert_eq!(killer.join().unwrap(), 0, "kill -9 of the training worker failed");
    assert_eq!(summary.steps, 3000, "the run must finish");

    let ckpt: mvp_nn::checkpoint::Loaded<serde_json::Value> =
        mvp_nn::checkpoint::load(&latest_checkpoint(&summary.run_dir)).unwrap();
    assert!(ckpt.meta["env_restarts"].as_u64().unwrap() >= 1, "the restart is counted: {}", ckpt.meta);
    let log = std::fs::read_to_string(summary.run_dir.join("metrics.jsonl")).unwrap();
    assert!(log.contains("env/restarts"), "the restart is logged");

    // 3000 steps of 200-step episodes end 15 times: either the kill lands between two
    // episodes, or it cuts one short and the last one is then cut by the end of the run.
    let ends = assert_no_transition_joins_two_episodes(trainer.buffer());
    assert!(ends >= 15, "{ends} episode ends");
}

/// A worker listening on TCP (`python -m mvp_envs.worker --listen 127.0.0.1:PORT`; PORT 0: a
/// free one) and the address it reports.
fn listening_worker(port: u16) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = mvp_envs::python_module_command("mvp_envs.worker").unwrap();
    cmd.arg("--listen").arg(format!("127.0.0.1:{port}")).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let address = first.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{first}")).to_string();
    // Keep reading its log lines, so that its writes never meet a closed pipe.
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|l| eprintln!("[tcp worker] {l}")));
    (child, address)
}

#[test]
fn training_environments_on_a_tcp_worker_survive_its_restart() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let (mut first, address) = listening_worker(0);
    let addresses = format!("env.worker_addresses=[\"{address}\"]");
    let cfg = tiny(
        dir.path(),
        "tcp",
        &[
            "env.name=\"cube-single-play-singletask-task1-v0\"",
            &addresses,
            "data.demo_episodes=0",
            "schedule.offline_steps=0",
            "schedule.online_steps=3000",
            "schedule.warmup_steps=1000",
            "schedule.eval_episodes=1",
        ],
    );
    let mut trainer = Trainer::new(cfg).unwrap();
    // Its machine loses the worker (kill -9) and brings a new one up on the same port.
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        first.kill().unwrap();
        first.wait().unwrap();
        listening_worker(port).0
    });
    let summary = trainer.run().unwrap();
    let mut second = restarter.join().unwrap();
    assert_eq!(summary.steps, 3000, "the run must finish");
    let ckpt: mvp_nn::checkpoint::Loaded<serde_json::Value> =
        mvp_nn::checkpoint::load(&latest_checkpoint(&summary.run_dir)).unwrap();
    assert!(ckpt.meta["env_restarts"].as_u64().unwrap() >= 1, "the reconnection is counted: {}", ckpt.meta);
    let ends = assert_no_transition_joins_two_episodes(trainer.buffer());
    assert!(ends >= 15, "{ends} episode ends");
    drop(trainer);
    second.kill().unwrap();
    second.wait().unwrap();
    // Nothing listening: the error says where and what to start there.
    let mut config = mvp_envs::WorkerConfig::new("cube-single-play-singletask-task1-v0");
    config.address = Some(address.clone());
    config.startup_timeout = std::time::Duration::from_millis(300);
    let err = format!("{:#}", mvp_envs::PythonWorker::spawn(config).unwrap_err());
    assert!(err.contains(&address) && err.contains("--listen"), "{err}");
}

/// Every stored transition that does not end an episode is followed by the next step of the
/// same episode (its next observation is the following observation). Returns the number of
/// episode ends.
fn assert_no_transition_joins_two_episodes(buffer: &mvp_replay::ReplayBuffer) -> usize {
    let n = buffer.num_starts(1);
    let mut one = mvp_replay::ChunkBatch::new(n, 1, buffer.obs_dim(), buffer.act_dim());
    buffer.chunks_at(&(0..n).collect::<Vec<_>>(), 1, 0.99, &mut one).unwrap();
    let (d, episode_ends) = (buffer.obs_dim(), buffer.episode_ends());
    let mut ends = 0;
    for k in 0..n {
        if episode_ends[k] {
            ends += 1;
            continue;
        }
        if k + 1 == n {
            break;
        }
        assert_eq!(
            &one.next_observations[k * d..(k + 1) * d],
            &one.observations[(k + 1) * d..(k + 2) * d],
            "transition {k} joins two episodes"
        );
    }
    ends
}

#[test]
fn several_training_environments_store_whole_episodes_and_train() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path(), "vector", &["env.num_envs=4", "schedule.online_steps=400", "env.eval_envs=3"]);
    let mut trainer = Trainer::new(cfg).unwrap();
    let dataset_len = trainer.buffer().len();
    let s = trainer.run().unwrap();
    assert_eq!(s.steps, 440);
    // 400 environment steps: 100 collector steps of 4 environments; finished episodes only.
    let online = trainer.buffer().len() - dataset_len;
    assert!(online > 0 && online <= 400, "{online} online transitions");
    assert_no_transition_joins_two_episodes(trainer.buffer());
    let log = std::fs::read_to_string(s.run_dir.join("metrics.jsonl")).unwrap();
    assert!(log.contains("train/episode_return") && log.contains("eval/success"));
}

#[test]
fn offline_to_online_on_ogbench_with_a_generated_dataset_and_clear_errors() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/cube-single-play-v0.npz");
    let env = "env.name=\"cube-single-play-singletask-task1-v0\"";
    let path = format!("data.path=\"{}\"", data.display());
    // A missing dataset names the command that makes it.
    let cfg = tiny(dir.path(), "missing", &[env, &path]);
    let err = format!("{:#}", Trainer::new(cfg).err().expect("missing dataset"));
    assert!(err.contains("mvp data ogbench --env cube-single-play-v0"), "{err}");
    // With data.generate_episodes the run makes it (two episodes, two processes), trains
    // offline on it, then online.
    let cfg = tiny(dir.path(), "ogbench", &[env, &path, "data.generate_episodes=2", "schedule.eval_episodes=1"]);
    let mut trainer = Trainer::new(cfg).unwrap();
    assert!(data.exists() && mvp_data::ogbench_val_path(&data).exists());
    // 2 episodes of 1000 transitions (OGBench's 1001-row episodes).
    assert_eq!(trainer.buffer().len(), 2000);
    let s = trainer.run().unwrap();
    assert_eq!(s.steps, 100);
    // Every online transition is stored (one environment).
    assert_eq!(trainer.buffer().len(), 2000 + 60);
    // Evaluating the run reads its networks only: it works with the dataset gone.
    let run = trainer.run_dir().to_path_buf();
    drop(trainer);
    std::fs::rename(&data, dir.path().join("moved.npz")).unwrap();
    let mut eval = mvp_train::RunEvaluation::open(&run, None, &["schedule.eval_episodes=2".into()]).unwrap();
    assert_eq!(eval.step(), 100);
    assert_eq!(eval.evaluate().unwrap().episodes, 2);
    std::fs::rename(dir.path().join("moved.npz"), &data).unwrap();
    // A dataset made for another environment is refused with both shapes.
    let cfg = tiny(dir.path(), "other", &["env.name=\"cube-double-play-singletask-task2-v0\"", &path]);
    let err = format!("{:#}", Trainer::new(cfg).err().expect("wrong dataset"));
    assert!(err.contains("28") && err.contains("37"), "{err}");
}

#[test]
fn offline_to_online_on_robomimic_lift_with_generated_demonstrations() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lift.hdf5");
    let path = format!("data.path=\"{}\"", data.display());
    let env = "env.name=\"robomimic/lift\"";
    let cfg = tiny(dir.path(), "missing", &[env, &path]);
    let err = format!("{:#}", Trainer::new(cfg).err().expect("missing dataset"));
    assert!(err.contains("mvp data robomimic --task lift"), "{err}");
    let cfg = tiny(dir.path(), "lift", &[env, &path, "data.generate_episodes=2", "schedule.eval_episodes=1"]);
    let mut trainer = Trainer::new(cfg).unwrap();
    let offline = trainer.buffer().len();
    assert!(offline > 20, "two lift demonstrations: {offline} transitions");
    let s = trainer.run().unwrap();
    assert_eq!(s.steps, 100);
    assert_eq!(trainer.buffer().len(), offline + 60);
    assert_eq!(s.eval.unwrap().episodes, 1);
}

#[test]
fn an_observation_history_stacks_the_dataset_and_the_environments_alike() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path(), "history", &["env.obs_history=3", "schedule.eval_interval=100"]);
    let mut trainer = Trainer::new(cfg).unwrap();
    let summary = trainer.run().unwrap();
    assert_eq!(summary.steps, 100);
    let one = mvp_envs::make_native("branch-reach-v0").unwrap().spec().obs_dim;
    let buffer = trainer.buffer();
    assert_eq!(buffer.obs_dim(), 3 * one, "three observations side by side");
    // Offline rows (the demonstrator's) and online rows (the environment's) alike: inside an
    // episode, the next observation is the observation window moved by one step.
    let ends = assert_no_transition_joins_two_episodes(buffer);
    assert!(ends >= 20, "{ends} episode ends (20 demonstrations, then online episodes)");
    let n = buffer.num_starts(1);
    let mut rows = mvp_replay::ChunkBatch::new(n, 1, buffer.obs_dim(), buffer.act_dim());
    buffer.chunks_at(&(0..n).collect::<Vec<_>>(), 1, 0.99, &mut rows).unwrap();
    for k in 0..n {
        let (o, next) = (
            &rows.observations[k * 3 * one..(k + 1) * 3 * one],
            &rows.next_observations[k * 3 * one..(k + 1) * 3 * one],
        );
        assert_eq!(o[one..], next[..2 * one], "row {k}: the window did not move by one observation");
    }
    let err = format!("{:#}", TrainConfig::load(None, &["env.obs_history=0".to_string()]).unwrap_err());
    assert!(err.contains("env.obs_history"), "{err}");
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
