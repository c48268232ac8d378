//! Robomimic tasks through the Python worker, and the Rust HDF5 reader on files written by the
//! generator (`python -m mvp_envs.data_robomimic`, h5py).
//!
//! They need the project's venv (`.venv/`, `make setup`) and libhdf5 (`scripts/setup-debian.sh`);
//! without them they fail with that instruction instead of being skipped.

use mvp_data::{read_robomimic, RobomimicFilter, RobomimicOptions};
use mvp_envs::{python_command, Env, WorkerConfig, WorkerEnv};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn env(env_id: &str, env_kwargs: Option<serde_json::Value>) -> WorkerEnv {
    let mut config = WorkerConfig::new(env_id);
    config.env_kwargs = env_kwargs;
    WorkerEnv::new(config).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Steps `robomimic/<task>` for a few dozen random steps and checks dims, rewards and flags.
fn steps_for_real(task: &str, obs_dim: usize, horizon: usize) {
    let id = format!("robomimic/{task}");
    let mut env = env(&id, None);
    let spec = env.spec().clone();
    assert_eq!((spec.obs_dim, spec.action_dim, spec.max_episode_steps), (obs_dim, 7, horizon), "{id}");
    assert_eq!(spec.action_low, vec![-1.0; 7]);
    assert_eq!(spec.action_high, vec![1.0; 7]);
    let (obs0, info) = env.reset(Some(7)).unwrap();
    assert_eq!(obs0.len(), obs_dim);
    assert!(!info.success);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for _ in 0..30 {
        let action: Vec<f32> = (0..7).map(|_| rng.random_range(-1.0f32..=1.0)).collect();
        let step = env.step(&action).unwrap();
        assert_eq!(step.obs.len(), obs_dim);
        assert!(step.obs.iter().all(|x| x.is_finite()));
        assert!(step.reward == -1.0 || step.reward == 0.0, "reward {}", step.reward);
        assert_eq!(step.terminated, step.info.success);
        assert_eq!(step.reward == 0.0, step.info.success);
        assert!(!step.truncated);
        if step.terminated {
            break;
        }
    }
    // Same seed, same initial state.
    let (again, _) = env.reset(Some(7)).unwrap();
    assert_eq!(obs0, again, "{id}: reset(seed) is not reproducible");
    env.close().unwrap();
}

#[test]
fn lift_steps_through_the_worker() {
    steps_for_real("lift", 19, 300);
}

#[test]
fn can_steps_through_the_worker() {
    steps_for_real("can", 23, 300);
}

#[test]
fn square_steps_through_the_worker() {
    steps_for_real("square", 23, 400);
}

/// Runs python code (or `-m module args`) as the worker runs (venv, envs/ on the path);
/// panics with its stderr.
fn run_python(args: &[&str]) -> String {
    let mut cmd = python_command().unwrap_or_else(|e| panic!("{e}"));
    let out = cmd.args(args).output().expect("cannot start python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn generate_lift(dir: &Path, episodes: usize) -> PathBuf {
    let path = dir.join("lift.hdf5");
    run_python(&[
        "-m",
        "mvp_envs.data_robomimic",
        "--task",
        "lift",
        "--episodes",
        &episodes.to_string(),
        "--seed",
        "3",
        "--out",
        path.to_str().unwrap(),
    ]);
    path
}

/// What h5py reads, flattened with numpy in the reader's conventions (as JSON).
const H5PY_DUMP: &str = r#"
import json, sys, h5py, numpy as np
keys = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
with h5py.File(sys.argv[1], "r") as f:
    names = sorted(f["data"], key=lambda n: int(n[5:]))
    if sys.argv[2] != "all":
        names = sorted((n.decode() for n in f["mask/" + sys.argv[2]][:]), key=lambda n: int(n[5:]))
    cols = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "masks", "terminals")}
    for n in names:
        g = f["data"][n]
        r = g["rewards"][:]
        d = g["dones"][:]
        cols["obs"].append(np.concatenate([g["obs"][k][:] for k in keys], axis=1))
        cols["next_obs"].append(np.concatenate([g["next_obs"][k][:] for k in keys], axis=1))
        cols["actions"].append(g["actions"][:])
        cols["rewards"].append(r - 1.0)
        cols["masks"].append(np.where((d != 0) | (r > 0), 0.0, 1.0))
        t = np.zeros(len(r)); t[-1] = 1.0
        cols["terminals"].append(t)
    out = {k: [float(x) for x in np.concatenate(v).astype(np.float32).ravel()] for k, v in cols.items()}
    out["names"] = names
    out["total"] = int(f["data"].attrs["total"])
    out["env_args"] = json.loads(f["data"].attrs["env_args"])
    print(json.dumps(out))
"#;

#[test]
fn generated_lift_file_reads_in_rust_as_in_h5py() {
    let dir = tempfile::tempdir().unwrap();
    let path = generate_lift(dir.path(), 2);
    for filter in ["all", "train", "valid"] {
        let want: serde_json::Value =
            serde_json::from_str(&run_python(&["-c", H5PY_DUMP, path.to_str().unwrap(), filter])).unwrap();
        let opts = RobomimicOptions { filter: filter.parse::<RobomimicFilter>().unwrap(), ..Default::default() };
        let got = read_robomimic(&path, &opts).unwrap_or_else(|e| panic!("{e}"));
        let ds = &got.dataset;
        let f32s =
            |k: &str| -> Vec<f32> { want[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
        assert_eq!(ds.obs_dim, 19, "lift: 3 + 4 + 2 + 10");
        assert_eq!(ds.act_dim, 7);
        assert_eq!(ds.observations, f32s("obs"), "{filter}");
        assert_eq!(ds.next_observations, f32s("next_obs"), "{filter}");
        assert_eq!(ds.actions, f32s("actions"), "{filter}");
        assert_eq!(ds.rewards, f32s("rewards"), "{filter}");
        assert_eq!(ds.masks, f32s("masks"), "{filter}");
        assert_eq!(ds.terminals, f32s("terminals"), "{filter}");
        let names: Vec<String> = serde_json::from_value(want["names"].clone()).unwrap();
        assert_eq!(got.demos, names);
        if filter == "all" {
            assert_eq!(ds.len() as u64, want["total"].as_u64().unwrap(), "attr total");
            assert_eq!(got.demos.len(), 2);
            let args: serde_json::Value = serde_json::from_str(got.env_args.as_deref().unwrap()).unwrap();
            assert_eq!(args, want["env_args"]);
            assert_eq!(got.env_name().as_deref(), Some("Lift"));
            // Only successful demos are kept: each ends with reward 0 and mask 0.
            let mut end = 0;
            for len in &got.demo_lengths {
                end += len;
                assert_eq!((ds.rewards[end - 1], ds.masks[end - 1], ds.terminals[end - 1]), (0.0, 0.0, 1.0));
            }
        } else {
            assert_eq!(got.demos.len(), 1, "{filter}: 2 demos split 1/1");
        }
    }
}

#[test]
fn dataset_replays_in_the_online_env_with_the_same_conventions() {
    // The online env built from the file's env_args, reset with the demo's seed, reproduces
    // the stored observations; replaying the stored actions ends with `terminated`, reward 0
    // at the step where the file has reward 1 (r − 1 = 0, mask 0): rewards and success are
    // computed on the state after the action in both.
    let dir = tempfile::tempdir().unwrap();
    let path = generate_lift(dir.path(), 1);
    let data = read_robomimic(&path, &RobomimicOptions::default()).unwrap();
    let ds = &data.dataset;
    let seed: u64 = run_python(&[
        "-c",
        "import sys, h5py; print(int(h5py.File(sys.argv[1])['data/demo_0'].attrs['seed']))",
        path.to_str().unwrap(),
    ])
    .trim()
    .parse()
    .unwrap();
    assert_eq!(seed, 3, "episode 0 of --seed 3");
    let mut env = env("robomimic/lift", Some(serde_json::json!({ "dataset": path })));
    let (obs, _) = env.reset(Some(seed)).unwrap();
    assert_eq!(obs, ds.observations[..19].to_vec(), "initial observation");
    let t = ds.len();
    for i in 0..t {
        let step = env.step(&ds.actions[i * 7..(i + 1) * 7]).unwrap();
        let stored = &ds.next_observations[i * 19..(i + 1) * 19];
        let gap = step.obs.iter().zip(stored).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(gap < 1e-3, "step {i}: online obs differs from next_obs by {gap}");
        assert_eq!(step.reward, ds.rewards[i], "step {i}");
        assert_eq!(step.mask(), ds.masks[i], "step {i}");
        assert_eq!(step.done(), i + 1 == t, "step {i} of {t}");
    }
    env.close().unwrap();

    // A file of another task is refused with both names.
    let mut config = WorkerConfig::new("robomimic/can");
    config.env_kwargs = Some(serde_json::json!({ "dataset": path }));
    let err = format!("{:#}", WorkerEnv::new(config).unwrap_err());
    assert!(err.contains("'Lift'") && err.contains("robomimic/can"), "{err}");
}

#[test]
fn broken_generated_file_fails_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = generate_lift(dir.path(), 1);
    let p = path.to_str().unwrap();
    // The edits turn HDF5's file locking off: the Rust reader in this process may still hold
    // its (shared) lock on the file for a moment after a failed read, and a writer needs an
    // exclusive one (seen once in CI: "unable to lock file, errno = 11").
    let edit = |code: &str| {
        let script = format!(
            "import sys, h5py, numpy as np\nf = h5py.File(sys.argv[1], 'r+', locking=False)\n{code}\nf.close()"
        );
        run_python(&["-c", &script, p]);
    };
    // A missing key.
    edit("f['data/demo_0/saved'] = f['data/demo_0/next_obs/object'][:]\ndel f['data/demo_0/next_obs/object']");
    let msg = read_robomimic(&path, &RobomimicOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("missing dataset `data/demo_0/next_obs/object`"), "{msg}");
    edit("f['data/demo_0/next_obs/object'] = f['data/demo_0/saved'][:]");
    // Asking for a key the file lacks.
    let opts = RobomimicOptions { obs_keys: vec!["robot0_eef_vel_lin".into()], ..Default::default() };
    let msg = read_robomimic(&path, &opts).unwrap_err().to_string();
    assert!(msg.contains("`data/demo_0/obs/robot0_eef_vel_lin`"), "{msg}");
    // A wrong shape: one reward short.
    edit("r = f['data/demo_0/rewards'][:]\ndel f['data/demo_0/rewards']\nf['data/demo_0/rewards'] = r[:-1]");
    let t = read_robomimic_len(&path);
    let msg = read_robomimic(&path, &RobomimicOptions::default()).unwrap_err().to_string();
    assert!(msg.contains(&format!("`data/demo_0/rewards` has shape [{}], expected [{t}]", t - 1)), "{msg}");
}

/// Rows of `data/demo_0/actions` (via h5py).
fn read_robomimic_len(path: &Path) -> usize {
    run_python(&[
        "-c",
        "import sys, h5py; print(h5py.File(sys.argv[1])['data/demo_0/actions'].shape[0])",
        path.to_str().unwrap(),
    ])
    .trim()
    .parse()
    .unwrap()
}
