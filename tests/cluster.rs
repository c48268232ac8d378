//! On a real two-node Ray cluster: a head node and a second node started on other ports of this
//! machine by each test (`ray start`, with Ray's token authentication, which Ray 2.59+ expects
//! on local clusters), stopped when the test ends; one cluster at a time (`ray stop` stops
//! every Ray process of the machine). `mvp sweep`, and a training run whose environment
//! workers are Ray actors (`env.remote = "ray"`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One cluster at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Ray cluster of a head node and a one-CPU second node; `ray stop` when dropped.
struct Cluster {
    env: Vec<(String, String)>,
    address: String,
    /// The second node's raylet port (`--node-manager-port`), which finds its process.
    second_node_port: u16,
}

impl Cluster {
    fn start(dir: &Path, port: u16, head_cpus: usize) -> Self {
        let token = dir.join("ray_token");
        let secret: String = (0..32).map(|i| format!("{:02x}", (i * 37 + port as usize) % 251)).collect();
        std::fs::write(&token, secret).unwrap();
        let env = vec![
            ("RAY_AUTH_MODE".to_string(), "token".to_string()),
            ("RAY_AUTH_TOKEN_PATH".to_string(), token.display().to_string()),
        ];
        let cluster = Self { env, address: format!("127.0.0.1:{port}"), second_node_port: port + 17 };
        let cpus = format!("--num-cpus={head_cpus}");
        let head = ["start", "--head", &format!("--port={port}"), &cpus, "--include-dashboard=false"];
        cluster.ray(&[&head[..], &["--disable-usage-stats"]].concat());
        let raylet = format!("--node-manager-port={}", cluster.second_node_port);
        let second = ["start", &format!("--address={}", cluster.address), "--num-cpus=1", &raylet];
        cluster.ray(&[&second[..], &["--disable-usage-stats"]].concat());
        cluster
    }

    fn ray(&self, args: &[&str]) {
        let out = Command::new(root().join(".venv/bin/ray"))
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .expect("the venv's ray (make setup installs it)");
        assert!(out.status.success(), "ray {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join(".venv/bin/ray")).args(["stop", "--force"]).output();
    }
}

/// The pids of processes whose command line passes `keep`.
fn processes(keep: impl Fn(&str) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            keep(&String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

/// The parent process of `pid` (0 when unknown).
fn parent(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) state ppid ...: the command may hold spaces, the fields after it do not.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// The pids of `mvp train` processes whose command line mentions `needle`.
fn train_processes(needle: &str) -> Vec<i32> {
    processes(|cmd| cmd.contains(" train ") && cmd.contains(needle))
}

#[test]
fn a_sweep_on_a_two_node_ray_cluster_survives_a_killed_run_and_reports() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 6391, 1);
    let out = dir.path().join("sweep");
    let config = root().join("configs/native-quick.toml");
    let sweep = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        format!(
            r#"out = "{}"
configs = ["{}"]
seeds = 2
sets = ["agent.batch_size=16", "agent.actor.network.hidden=[32, 32]", "agent.critic.network.hidden=[32, 32]",
        "data.demo_episodes=10", "schedule.offline_steps=600", "schedule.online_steps=600",
        "schedule.warmup_steps=20", "schedule.eval_interval=600", "schedule.eval_episodes=4",
        "schedule.checkpoint_interval=100", "schedule.log_interval=50"]
[variants]
mvp = []
lambda0 = ["agent.actor.ivc_weight=0.0"]
"#,
            out.display(),
            config.display()
        ),
    )
    .unwrap();
    let mut driver = Command::new(env!("CARGO_BIN_EXE_mvp"))
        .args(["sweep", sweep.to_str().unwrap(), "--address", &cluster.address])
        .envs(cluster.env.iter().cloned())
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Kill the first run's process with SIGKILL once it has a checkpoint (mid-run).
    let victim = "native-quick.mvp__seed0";
    let started = Instant::now();
    let killed = loop {
        let has_checkpoint = std::fs::read_dir(out.join(victim).join("checkpoints"))
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("step_")))
            .unwrap_or(false);
        let pids = train_processes(&format!("run.name=\"{victim}\""));
        if has_checkpoint && !pids.is_empty() {
            // SAFETY: a signal to a process of this test's sweep.
            break unsafe { libc::kill(pids[0], libc::SIGKILL) } == 0;
        }
        if started.elapsed() > Duration::from_secs(300) || driver.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let result = driver.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    assert!(killed, "no checkpointed run process to kill:\n{stdout}\n{stderr}");
    assert!(result.status.success(), "the sweep failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("sweep: 4 of 4 runs done"), "{stdout}");
    assert!(stderr.contains("running"), "progress lines: {stderr}");

    // The killed run was started twice, the second time from its checkpoint; the others once.
    let state = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(".sweep").join(format!("{name}.json"))).unwrap()).unwrap()
    };
    assert_eq!((state(victim)["starts"].as_u64(), state(victim)["resumes"].as_u64()), (Some(2), Some(1)));
    for name in ["native-quick.mvp__seed1", "native-quick.lambda0__seed0", "native-quick.lambda0__seed1"] {
        assert_eq!(state(name)["state"], "done", "{name}");
    }
    // Every run reached its last step, and no step was logged twice (the resumed run's rows
    // after its checkpoint were dropped before it continued).
    for name in [victim, "native-quick.mvp__seed1", "native-quick.lambda0__seed0", "native-quick.lambda0__seed1"] {
        let log = std::fs::read_to_string(out.join(name).join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r.get("critic/loss").is_some())
            .map(|r| r["step"].as_u64().unwrap())
            .collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{name}: steps out of order or repeated: {steps:?}");
        assert_eq!(steps.last(), Some(&1200), "{name}");
    }
    // `mvp report` of the runs: one group per variant.
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("native-quick.mvp") && summary.contains("native-quick.lambda0"), "{summary}");
    assert!(out.join("learning_curves.png").is_file());
    // Running the finished sweep again starts nothing.
    let again = Command::new(env!("CARGO_BIN_EXE_mvp"))
        .args(["sweep", sweep.to_str().unwrap(), "--address", &cluster.address])
        .envs(cluster.env.iter().cloned())
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("4 already done"));
    assert_eq!(state(victim)["starts"].as_u64(), Some(2));
}

#[test]
fn training_environments_on_ray_worker_actors_survive_a_killed_actor_and_a_lost_node() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Two CPUs on the head: room for both worker actors once the second node is gone.
    let cluster = Cluster::start(dir.path(), 6393, 2);
    let runs = dir.path().join("runs");
    let sets = [
        "env.name=\"cube-single-play-singletask-task1-v0\"".to_string(),
        "env.remote=\"ray\"".to_string(),
        format!("env.ray_address=\"{}\"", cluster.address),
        // Two environments, one per worker actor, one actor per one-CPU node.
        "env.num_envs=2".to_string(),
        "env.workers=2".to_string(),
        "data.demo_episodes=0".to_string(),
        "agent.batch_size=16".to_string(),
        "agent.actor.network.hidden=[32, 32]".to_string(),
        "agent.critic.network.hidden=[32, 32]".to_string(),
        "schedule.offline_steps=0".to_string(),
        "schedule.online_steps=6000".to_string(),
        "schedule.warmup_steps=500".to_string(),
        "schedule.eval_interval=6000".to_string(),
        "schedule.eval_episodes=1".to_string(),
        "schedule.log_interval=100".to_string(),
        format!("run.out_dir=\"{}\"", runs.display()),
        "run.name=\"ray\"".to_string(),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvp"));
    cmd.args(["train", "--config", root().join("configs/native-quick.toml").to_str().unwrap()]);
    sets.iter().for_each(|s| _ = cmd.args(["--set", s]));
    let mut run = cmd
        .envs(cluster.env.iter().cloned())
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Once the online phase is under way, kill the head node's worker actor (SIGKILL): Ray
    // restarts it there. Later, kill the second node's raylet: the node is lost with its
    // worker actor, which Ray places again on the head. A worker actor is a child process of
    // its node's raylet.
    let metrics = runs.join("ray/metrics.jsonl");
    let second_raylet = format!("node_manager_port={}", cluster.second_node_port);
    let started = Instant::now();
    let (mut killed_actor, mut killed_node) = (false, false);
    while !killed_node {
        let step = std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
            .max()
            .unwrap_or(0);
        let raylet = processes(|cmd| cmd.contains("raylet") && cmd.contains(&second_raylet));
        let actors = processes(|cmd| cmd.starts_with("ray::EnvWorkerActor"));
        let on_head: Vec<_> = actors.iter().filter(|&&a| Some(&parent(a)) != raylet.first()).collect();
        if !killed_actor && step >= 1000 && actors.len() == 2 && on_head.len() == 1 {
            // SAFETY: a signal to a worker actor of this test's cluster.
            killed_actor = unsafe { libc::kill(*on_head[0], libc::SIGKILL) } == 0;
        } else if killed_actor && step >= 3000 && raylet.len() == 1 && actors.len() == 2 && on_head.len() == 1 {
            // SAFETY: a signal to the second node's raylet, started by this test.
            killed_node = unsafe { libc::kill(raylet[0], libc::SIGKILL) } == 0;
        }
        if started.elapsed() > Duration::from_secs(300) || run.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = run.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    assert!(killed_actor && killed_node, "killed actor {killed_actor}, node {killed_node}:\n{stdout}\n{stderr}");
    assert!(result.status.success(), "the run failed:\n{stdout}\n{stderr}");
    assert!(stderr.matches("on Ray at").count() == 2, "both workers placed: {stderr}");
    assert!(stderr.matches("was replaced on Ray").count() >= 2, "both replacements are reported: {stderr}");

    // The run finished, counted the reconnection, and stored no transition joining two episodes.
    let checkpoints = runs.join("ray/checkpoints");
    let last = checkpoints.join(mvp_nn::checkpoint::latest(&checkpoints).expect("a checkpoint"));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(last.join("meta.json")).unwrap()).unwrap();
    let progress = &meta;
    assert_eq!(progress["step"].as_u64(), Some(6000), "{meta}");
    assert!(progress["env_restarts"].as_u64().unwrap() >= 2, "the restarts are counted: {meta}");
    let buffer = mvp_replay::ReplayBuffer::load(last.join("buffer.bin")).unwrap();
    let n = buffer.num_starts(1);
    let mut one = mvp_replay::ChunkBatch::new(n, 1, buffer.obs_dim(), buffer.act_dim());
    buffer.chunks_at(&(0..n).collect::<Vec<_>>(), 1, 0.99, &mut one).unwrap();
    let (d, episode_ends) = (buffer.obs_dim(), buffer.episode_ends());
    let mut ends = 0;
    for (k, &end) in episode_ends.iter().enumerate().take(n.saturating_sub(1)) {
        if end {
            ends += 1;
        } else {
            let (next, following) =
                (&one.next_observations[k * d..(k + 1) * d], &one.observations[(k + 1) * d..(k + 2) * d]);
            assert_eq!(next, following, "transition {k} joins two episodes");
        }
    }
    // 6,000 steps of 200-step episodes: 30 ends, less the two cut by the run's end.
    assert!(ends >= 27, "{ends} episode ends");
}
