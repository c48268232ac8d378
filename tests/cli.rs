//! End-to-end tests of the `mvp` binary.

use std::process::Command;

fn mvp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mvp")).args(args).env("OMP_NUM_THREADS", "1").output().expect("running mvp")
}

#[test]
fn help_lists_the_subcommands() {
    let out = mvp(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["train", "eval", "data", "bench", "export", "info"] {
        assert!(text.contains(cmd), "--help does not list `{cmd}`:\n{text}");
    }
}

#[test]
fn info_says_whether_libtorch_cuda_is_linked_in() {
    let out = mvp(&["info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The build links libtorch_cuda exactly when the installed libtorch has it (crates/cli/build.rs).
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.libtorch/torch/lib/libtorch_cuda.so");
    let expected = if lib.exists() { "libtorch CUDA library: loaded" } else { "libtorch CUDA library: not loaded" };
    assert!(text.contains(expected), "expected `{expected}` in:\n{text}");
}

#[test]
fn unimplemented_commands_say_so_and_fail() {
    let out = mvp(&["export", "--run", "x", "--out", "y"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not implemented yet"), "{err}");
}

#[test]
fn jvp_benchmark_reports_every_method_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("jvp.json");
    let out = mvp(&["bench", "jvp", "--batch", "16", "--iters", "3", "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("double backward") && text.contains("× forward"), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in ["forward_ms", "forward_jvp_ms", "forward_jvp_sg_ms", "double_backward_jvp_ms"] {
        let ms = report[key].as_f64().unwrap_or(-1.0);
        assert!(ms > 0.0, "{key} = {ms}");
    }
}

#[test]
fn mvp_learns_the_native_task_offline_to_online() {
    let dir = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/native-quick.toml");
    let out_dir = format!("run.out_dir=\"{}\"", dir.path().display());
    let out = mvp(&["train", "--config", config, "--set", &out_dir, "--set", "run.name=\"ci\""]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rate: f64 = stdout
        .split("success rate ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no success rate in:\n{stdout}"));
    assert!(rate >= 0.9, "MVP reached a success rate of only {rate}");
    let run = dir.path().join("ci");
    assert!(run.join("checkpoints/latest").exists() && run.join("tb").is_dir() && run.join("metrics.csv").exists());
    // `mvp eval` evaluates the saved checkpoint.
    let out = mvp(&["eval", "--run", run.to_str().unwrap(), "--episodes", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["episodes"], 5);
    // The native acting engine keeps the trained policy's success.
    let out = mvp(&["eval", "--run", run.to_str().unwrap(), "--episodes", "10", "--engine", "native-f32"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["success_rate"].as_f64().unwrap() >= 0.8, "native engine: {r}");
}

#[test]
fn speed_benchmarks_compare_every_method_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("latency.json");
    let out = mvp(&[
        "bench",
        "latency",
        "--hidden",
        "16,16",
        "--calls",
        "5",
        "--envs",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["method"].as_str()).collect();
    for m in ["MVP", "QC", "BFN", "diffusion (K=10", "diffusion (K=50"] {
        assert!(names.iter().any(|n| n.starts_with(m)), "{m} missing from {names:?}");
    }
    assert!(rows
        .iter()
        .all(|r| r["median_ms"].as_f64().unwrap() > 0.0 && r["mflop_per_action"].as_f64().unwrap() > 0.0));
    // The native engine serves MVP, QC and BFN (not diffusion).
    let native: Vec<&str> =
        rows.iter().filter(|r| r["engine"] == "native-f32").filter_map(|r| r["method"].as_str()).collect();
    assert!(native.len() == 3 && !native.iter().any(|n| n.starts_with("diffusion")), "{native:?}");
    let out = mvp(&["bench", "gemm", "--rows", "8", "--dim", "64", "--seconds", "0.01"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("native fp32"), "{text}");
    let train_json = dir.path().join("train.json");
    let out = mvp(&[
        "bench",
        "train",
        "--hidden",
        "16,16",
        "--batch",
        "8",
        "--iters",
        "2",
        "--only",
        "MVP",
        "--matmul",
        "f32,bf16",
        "--json",
        train_json.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("iterations / s"), "{text}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&train_json).unwrap()).unwrap();
    let precisions: Vec<&str> = rows.iter().filter_map(|r| r["matmul"].as_str()).collect();
    assert_eq!(precisions, ["f32", "bf16"], "one MVP row per matmul precision");
    let out = mvp(&["bench", "train", "--matmul", "fp16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("expected f32 or bf16"), "{err}");
}

#[test]
fn report_tabulates_groups_of_runs_and_plots_their_curves() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // Two seeds of one method, one of another; tiny native runs with two evaluations.
    for (name, n) in [("mvp__seed0", "32"), ("mvp__seed1", "32"), ("mvp-N1__seed0", "1")] {
        let out = mvp(&[
            "--log",
            "warn",
            "train",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/native-quick.toml"),
            "--set",
            &format!("run.out_dir=\"{}\"", runs.display()),
            "--set",
            &format!("run.name=\"{name}\""),
            "--set",
            &format!("agent.num_samples={n}"),
            "--set",
            "agent.batch_size=16",
            "--set",
            "data.demo_episodes=10",
            "--set",
            "schedule.offline_steps=20",
            "--set",
            "schedule.online_steps=20",
            "--set",
            "schedule.warmup_steps=5",
            "--set",
            "schedule.eval_interval=20",
            "--set",
            "schedule.eval_episodes=2",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = mvp(&["report", "--runs", runs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = std::fs::read_to_string(runs.join("summary.md")).unwrap();
    assert!(summary.contains("| mvp | 2 |") && summary.contains("| mvp-N1 | 1 |"), "{summary}");
    let results = std::fs::read_to_string(runs.join("results.csv")).unwrap();
    assert_eq!(results.lines().count(), 4, "{results}");
    let curves = std::fs::read_to_string(runs.join("curves.csv")).unwrap();
    // Evaluations at steps 20 and 40 for both groups.
    assert!(curves.contains("mvp,20,") && curves.contains("mvp,40,") && curves.contains("mvp-N1,40,"), "{curves}");
    // The seconds column: the mean time since each run's start, later for later steps.
    let secs = |step: &str| -> f64 {
        let line = curves.lines().find(|l| l.starts_with(&format!("mvp,{step},"))).unwrap();
        line.rsplit(',').next().unwrap().parse().unwrap()
    };
    assert!(secs("20") >= 0.0 && secs("40") > secs("20"), "{curves}");
    for png in ["learning_curves.png", "learning_curves_wallclock.png"] {
        let png = std::fs::read(runs.join(png)).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
    }
    // A folder without runs is a one-line error.
    let out = mvp(&["report", "--runs", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run under"));
}

#[test]
fn env_benchmark_compares_the_bridge_with_plain_python() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("env.json");
    let out = mvp(&[
        "bench",
        "env",
        "--env",
        "cube-single-play-singletask-task1-v0",
        "--workers",
        "1,2",
        "--steps",
        "100",
        "--rounds",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4, "lockstep and async rows for 1 and 2 workers");
    for (row, (w, mode)) in rows.iter().zip([(1, "lockstep"), (1, "async"), (2, "lockstep"), (2, "async")]) {
        assert_eq!((row["workers"].as_u64().unwrap(), row["mode"].as_str().unwrap()), (w, mode));
        assert!(
            row["bridge_steps_per_s"].as_f64().unwrap() > 0.0 && row["plain_steps_per_s"].as_f64().unwrap() > 0.0,
            "{row}"
        );
        assert_eq!(row["overhead_per_round"].as_array().unwrap().len(), 2, "{row}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bridge overhead"), "{text}");
}

#[test]
fn data_commands_make_files_the_readers_accept() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("cs.npz");
    let out = mvp(&[
        "data",
        "ogbench",
        "--env",
        "cube-single-play-v0",
        "--episodes",
        "1",
        "--episode-length",
        "50",
        "--workers",
        "1",
        "--out",
        npz.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(npz.exists() && dir.path().join("cs-val.npz").exists());
    let h5 = dir.path().join("lift.hdf5");
    let out = mvp(&[
        "data",
        "robomimic",
        "--task",
        "lift",
        "--episodes",
        "1",
        "--workers",
        "1",
        "--out",
        h5.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = mvp_data::read_robomimic(&h5, &Default::default()).unwrap();
    assert_eq!(read.demos.len(), 1);
    assert_eq!(read.dataset.obs_dim, 19);
    // Bad input: an unknown OGBench dataset is a one-line error.
    let out = mvp(&[
        "data",
        "ogbench",
        "--env",
        "cube-nonexistent-play-v0",
        "--episodes",
        "1",
        "--out",
        dir.path().join("x.npz").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}
