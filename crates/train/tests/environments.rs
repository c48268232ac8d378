//! The trainer on real environments: OGBench and robomimic through Python workers, videos,
//! worker crashes and restarts, several training environments, observation histories.

mod common;

use std::path::Path;

use common::{latest_checkpoint, lock, tiny};
use mvp_agent::TrainConfig;
use mvp_train::Trainer;

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
/// free one) for the secret in `secret_file`, with `args`, and the address it reports.
fn listening_worker(port: u16, secret_file: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = mvp_envs::python_module_command("mvp_envs.worker").unwrap();
    cmd.arg("--listen").arg(format!("127.0.0.1:{port}")).arg("--secret-file").arg(secret_file).args(args);
    let mut child = cmd.env_remove(mvp_envs::SECRET_ENV).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    while !first.starts_with("listening on ") {
        first.clear();
        assert!(stderr.read_line(&mut first).unwrap() > 0, "the worker ended before it listened");
        eprint!("[tcp worker] {first}");
    }
    let address = first.trim().strip_prefix("listening on ").unwrap().to_string();
    // Keep reading its log lines, so that its writes never meet a closed pipe.
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|l| eprintln!("[tcp worker] {l}")));
    (child, address)
}

#[test]
fn training_environments_on_a_tcp_worker_survive_its_restart() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("worker-secret");
    std::fs::write(&secret_file, "the-secret-of-this-test-0123456789").unwrap();
    std::fs::set_permissions(&secret_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The first worker dies abruptly (as if killed) after 1,500 steps: mid-episode, whatever
    // this machine's speed.
    let (mut first, address) = listening_worker(0, &secret_file, &["--fail-after-steps", "1500"]);
    let addresses = format!("env.worker_addresses=[\"{address}\"]");
    let secret_key = format!("env.worker_secret_file={:?}", secret_file.display().to_string());
    let cfg = tiny(
        dir.path(),
        "tcp",
        &[
            "env.name=\"cube-single-play-singletask-task1-v0\"",
            &addresses,
            &secret_key,
            "data.demo_episodes=0",
            "schedule.offline_steps=0",
            "schedule.online_steps=3000",
            "schedule.warmup_steps=1000",
            "schedule.eval_episodes=1",
        ],
    );
    let mut trainer = Trainer::new(cfg).unwrap();
    // Its machine brings a new one up on the same port once it is gone.
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let file = secret_file.clone();
    let restarter = std::thread::spawn(move || {
        let status = first.wait().unwrap();
        assert_eq!(status.code(), Some(3), "the first worker ends by its injected fault");
        listening_worker(port, &file, &[]).0
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
/// same episode. Returns the number of episode ends.
fn assert_no_transition_joins_two_episodes(buffer: &mvp_replay::ReplayBuffer) -> usize {
    assert_eq!(buffer.joins(), Vec::<usize>::new(), "transitions that join two episodes");
    buffer.episode_ends().iter().filter(|&&end| end).count()
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
