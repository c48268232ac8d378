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
