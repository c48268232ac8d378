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

/// A tiny native-quick run (20 offline + 20 online steps, batch 16) named `name` under `runs`,
/// with `extra` overrides.
fn tiny_native_run(runs: &std::path::Path, name: &str, extra: &[&str]) -> std::process::Output {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/native-quick.toml");
    let mut args: Vec<String> = ["--log", "warn", "train", "--config", config].map(String::from).to_vec();
    let sets = [
        format!("run.out_dir=\"{}\"", runs.display()),
        format!("run.name=\"{name}\""),
        "agent.batch_size=16".into(),
        "data.demo_episodes=10".into(),
        "schedule.offline_steps=20".into(),
        "schedule.online_steps=20".into(),
        "schedule.warmup_steps=5".into(),
    ];
    for set in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    mvp(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn an_exported_policy_evaluates_without_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("runs/quick");
    let out =
        tiny_native_run(&dir.path().join("runs"), "quick", &["schedule.eval_interval=10", "schedule.eval_episodes=4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run_s = run.to_str().unwrap();
    // The run's own evaluation of its latest checkpoint on the native engine...
    let by_run = mvp(&["eval", "--run", run_s, "--engine", "native"]);
    assert!(by_run.status.success(), "{}", String::from_utf8_lossy(&by_run.stderr));
    let policy = dir.path().join("policy");
    let out = mvp(&["export", "--run", run_s, "--out", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("exported step 40"));
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(policy.join("policy.json")).unwrap()).unwrap();
    assert_eq!(spec["metadata"]["env"], "branch-reach-v0");
    assert_eq!(spec["num_samples"], 32);
    // The best evaluation's policy is kept in the run as an exported policy too.
    let best: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("best/policy.json")).unwrap()).unwrap();
    let curve: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["eval/success"].as_f64())
        .collect();
    assert_eq!(curve.len(), 4);
    assert_eq!(best["metadata"]["eval_success"].as_f64(), curve.iter().copied().reduce(f64::max));
    // A checkpoint that does not exist is named with those that do.
    let out = mvp(&["eval", "--run", run_s, "--step", "7"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("step_0000000007") && err.contains("step_0000000040"), "{err}");
    // ...is what the exported policy does with the run directory gone.
    std::fs::remove_dir_all(&run).unwrap();
    let by_policy = mvp(&["eval", "--policy", policy.to_str().unwrap()]);
    assert!(by_policy.status.success(), "{}", String::from_utf8_lossy(&by_policy.stderr));
    assert_eq!(String::from_utf8_lossy(&by_policy.stdout), String::from_utf8_lossy(&by_run.stdout));
    let out = mvp(&["eval", "--policy", dir.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("policy.json"), "{err}");
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
    let out = mvp(&["eval", "--run", run.to_str().unwrap(), "--episodes", "10", "--engine", "native"]);
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
    let native: Vec<&str> = rows
        .iter()
        .filter(|r| r["engine"]["engine"] == "native" && r["engine"]["precision"] == "f32")
        .filter_map(|r| r["method"].as_str())
        .collect();
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
        "--select",
        "libtorch,native",
        "--select-precision",
        "f32",
        "--actor",
        "libtorch,native",
        "--profile",
        "--json",
        train_json.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("iterations / s"), "{text}");
    // The profile names every phase of an update, the TD target's on the engine that ran it.
    for phase in [
        "| target: generate |",
        "| target: score |",
        "| target: generate and score (native) |",
        "| actor: backward |",
        "| actor: loss and backward (native) |",
    ] {
        assert!(text.contains(phase), "{phase} missing:\n{text}");
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&train_json).unwrap()).unwrap();
    // Native rows name their kernels ("native avx2 f32"): compare without them.
    let engine =
        |s: &str| if s.starts_with("native ") { format!("native {}", s.rsplit(' ').next().unwrap()) } else { s.into() };
    let mut runs: Vec<(&str, String)> =
        rows.iter().filter_map(|r| Some((r["matmul"].as_str()?, engine(r["select"].as_str()?)))).collect();
    runs.dedup(); // the actor engines of one precision and selection engine are adjacent rows
    assert_eq!(
        runs,
        [
            ("f32", "libtorch".to_string()),
            ("f32", "native f32".to_string()),
            ("bf16", "libtorch".to_string()),
            ("bf16", "native f32".to_string())
        ],
        "MVP rows for every matmul precision and selection engine"
    );
    let phases_of = |r: &serde_json::Value| -> Vec<String> {
        r["phases"].as_array().into_iter().flatten().filter_map(|p| Some(p["phase"].as_str()?.to_string())).collect()
    };
    for r in &rows {
        let names = phases_of(r);
        let has = |n: &str| names.iter().any(|p| p == n);
        assert!(
            ["batch: sample", "target: value", "critic: adam", "actor: adam", "polyak"].iter().all(|n| has(n))
                && names.iter().any(|p| p.starts_with("target: generate")),
            "every phase of an update in the JSON: {names:?}"
        );
    }
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
        let samples = format!("agent.num_samples={n}");
        let out = tiny_native_run(&runs, name, &[&samples, "schedule.eval_interval=20", "schedule.eval_episodes=2"]);
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
    // The seconds column: the mean time since each run's start, never earlier for later steps.
    let secs = |step: &str| -> f64 {
        let line = curves.lines().find(|l| l.starts_with(&format!("mvp,{step},"))).unwrap();
        line.rsplit(',').next().unwrap().parse().unwrap()
    };
    // Reported to a tenth of a second, so two quick evaluations may share a value.
    assert!(secs("20") >= 0.0 && secs("40") >= secs("20"), "{curves}");
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
        "--modes",
        "lockstep,async,tcp",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6, "lockstep, async and tcp rows for 1 and 2 workers");
    let expected = [(1, "lockstep"), (1, "async"), (1, "tcp"), (2, "lockstep"), (2, "async"), (2, "tcp")];
    for (row, (w, mode)) in rows.iter().zip(expected) {
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

/// Ctrl-C (SIGINT) during `mvp train` finishes the update, writes a checkpoint, names the
/// resume command and exits with 130; the resumed run continues, and its metrics hold each
/// step once.
#[test]
fn interrupted_training_checkpoints_and_resumes_without_duplicated_rows() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("interrupted");
    let child = Command::new(env!("CARGO_BIN_EXE_mvp"))
        .args([
            "--log",
            "info",
            "train",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/native-quick.toml"),
            "--set",
            &format!("run.out_dir=\"{}\"", dir.path().display()),
            "--set",
            "run.name=\"interrupted\"",
            "--set",
            "schedule.offline_steps=1000000",
            "--set",
            "schedule.log_interval=20",
            "--set",
            "schedule.eval_interval=0",
            "--set",
            "schedule.checkpoint_interval=0",
        ])
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once a few metric rows are written (training is under way, no checkpoint yet).
    let metrics = run.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map(|t| t.lines().count()).unwrap_or(0) < 3 {
        assert!(started.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!run.join("checkpoints").exists());
    // SAFETY: kill(2) on the child's pid, which we own and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("INFO") && !err.contains('\u{1b}'), "log lines to a pipe carry no colour codes: {err}");
    assert!(err.contains(&format!("mvp train --resume {}", run.display())), "{err}");
    let root = run.join("checkpoints");
    let latest = std::fs::read_to_string(root.join("latest")).unwrap();
    let step: u64 = latest.trim().trim_start_matches("step_").parse().unwrap();
    assert!(step > 0, "checkpoint {latest}");

    // Resume and stop 40 steps later: the metrics hold every logged step once.
    let stop = format!("schedule.stop_after={}", step + 40);
    let out = mvp(&["--log", "warn", "train", "--resume", run.to_str().unwrap(), "--set", &stop]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let steps: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .filter(|l| l.contains("critic/loss"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "a step logged twice: {steps:?}");
    assert_eq!(*steps.last().unwrap(), (step + 40) / 20 * 20, "the resumed run logged on");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let loss_rows: Vec<&str> = csv.lines().filter(|l| l.contains(",critic/loss,")).collect();
    assert_eq!(loss_rows.len(), steps.len(), "the CSV holds the same rows");
}

#[test]
fn train_check_prints_the_resolved_config_and_names_a_bad_key() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/native-quick.toml");
    let ok = mvp(&["train", "--check", "--config", config, "--set", "runtime.device=\"cuda\""]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let resolved: toml::Value = toml::from_str(&String::from_utf8_lossy(&ok.stdout)).unwrap();
    assert_eq!(resolved["runtime"]["device"].as_str(), Some("cuda:0"));
    assert_eq!(resolved["agent"]["num_samples"].as_integer(), Some(32), "the file's own values");
    let bad = mvp(&["train", "--check", "--config", config, "--set", "env.remote=\"rya\""]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("env.remote") && err.contains("`ray`"), "{err}");
}

#[test]
fn a_sweep_with_a_bad_run_config_stops_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/native-quick.toml");
    let file = dir.path().join("sweep.toml");
    let out = dir.path().join("out");
    std::fs::write(
        &file,
        format!(
            "out = \"{}\"\nconfigs = [\"{config}\"]\n[variants]\ngood = []\nbad = [\"agent.num_sample=4\"]\n",
            out.display()
        ),
    )
    .unwrap();
    let result = mvp(&["sweep", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{err}");
    assert!(err.contains("native-quick.bad__seed0") && err.contains("num_sample"), "names the run and the key: {err}");
    // The check runs before Ray starts: no run was started, no state written.
    assert!(!out.join(".sweep").exists(), "nothing started");
    assert!(!err.contains("sweep: "), "no progress line: {err}");
}

#[test]
fn a_sweep_asks_for_a_gpu_for_runs_on_cuda_unless_its_file_says_otherwise() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/native-quick.toml");
    let code = format!(
        r#"
import json, sys
from mvp_envs import sweep
runs = [dict(name="cpu", config="{config}", sets=[], seed=0),
        dict(name="cuda", config="{config}", sets=['runtime.device="cuda"'], seed=0)]
for gpus in (None, 0.5):
    sweep.check_runs(dict(gpus=gpus), runs, "{mvp}", ".")
    print(json.dumps([r["gpus"] for r in runs]))
"#,
        mvp = env!("CARGO_BIN_EXE_mvp")
    );
    let out = mvp_envs::python_command().unwrap().args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<_> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines, ["[0.0, 1.0]", "[0.5, 0.5]"]);
}

#[test]
fn audit_says_a_run_directory_is_sound_and_names_a_duplicated_metric() {
    let runs = tempfile::tempdir().unwrap();
    let out = tiny_native_run(runs.path(), "audited", &["schedule.log_interval=5", "schedule.save_buffer=true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = runs.path().join("audited");
    let audit = mvp(&["audit", run.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert!(audit.status.success(), "{text}{}", String::from_utf8_lossy(&audit.stderr));
    assert!(text.contains("ok   20 online transitions stored for 20 online steps"), "{text}");
    assert!(text.contains("0 transitions that join two episodes"), "{text}");
    // A metrics row written twice (as a resume that forgot to truncate would) is named.
    let metrics = run.join("metrics.jsonl");
    let rows = std::fs::read_to_string(&metrics).unwrap();
    let first = rows.lines().next().unwrap().to_string();
    std::fs::write(&metrics, format!("{rows}{first}\n")).unwrap();
    let audit = mvp(&["audit", run.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert_eq!(audit.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL") && text.contains("logged twice"), "{text}");
}
