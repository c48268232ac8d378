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

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 5000, ..Default::default() })]

    /// Replies of any bytes read with any sequence of reads (counts, floats, flags, raw runs,
    /// lengths up to usize::MAX): each read returns its bytes or an error, never panics.
    #[test]
    fn the_reply_cursor_never_panics_on_malformed_bodies(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        reads in proptest::collection::vec((0u8..5, proptest::prop_oneof![
            0usize..32,
            proptest::prelude::Just(usize::MAX),
            proptest::prelude::Just(usize::MAX / 4 + 1),
            proptest::prelude::any::<usize>(),
        ]), 0..8),
    ) {
        let mut r = Cursor::new(&body, "fuzz");
        for (op, n) in reads {
            let _ = match op {
                0 => r.count(n).map(|_| 0),
                1 => r.f32s(n).map(|v| v.len()),
                2 => r.bools(n).map(|v| v.len()),
                3 => r.u32(),
                _ => r.take(n).map(|s| s.len()),
            };
        }
        let _ = r.finish();
    }
}
