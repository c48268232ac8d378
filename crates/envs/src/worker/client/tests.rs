//! Unit tests of the worker client: the missing-venv error and the reply cursor.

use super::*;
use crate::worker::protocol::{put_u32, Cursor};

#[test]
fn missing_venv_error_says_to_run_make_setup() {
    let dir = std::env::temp_dir().join(format!("mvp-no-venv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = WorkerConfig::new("cube-single-play-singletask-task1-v0");
    config.root = Some(dir.clone());
    config.python = None;
    if std::env::var_os("MVP_PYTHON").is_some() {
        return; // the interpreter comes from the environment, not from the root
    }
    let err = PythonWorker::spawn(config).unwrap_err();
    let msg = err.to_string();
    assert_eq!(msg, format!("Python env venv not found at {}; run `make setup`", dir.join(".venv").display()));
    assert!(matches!(err.downcast_ref::<WorkerError>(), Some(WorkerError::VenvMissing(_))));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cursor_reads_little_endian_and_rejects_short_or_long_bodies() {
    let mut body = Vec::new();
    put_u32(&mut body, 2);
    body.extend_from_slice(&1.5f32.to_le_bytes());
    body.extend_from_slice(&(-2.0f32).to_le_bytes());
    body.extend_from_slice(&[1, 0]);
    let mut r = Cursor::new(&body, "test");
    r.count(2).unwrap();
    assert_eq!(r.f32s(2).unwrap(), vec![1.5, -2.0]);
    assert_eq!(r.bools(2).unwrap(), vec![true, false]);
    r.finish().unwrap();

    let mut r = Cursor::new(&body, "test");
    assert!(r.count(3).is_err());
    let mut r = Cursor::new(&body[..6], "test");
    r.count(2).unwrap();
    assert!(r.f32s(2).is_err());
    let r = Cursor::new(&body, "test");
    assert!(r.finish().is_err());
}
