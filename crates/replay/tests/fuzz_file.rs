//! The replay file reader driven with damaged and truncated files: it returns an error or a
//! consistent buffer, never panics, and never allocates by a length the file cannot back.

use mvp_replay::{ReplayBuffer, Transition};
use proptest::prelude::*;

/// A saved buffer of 7 transitions (obs 3, action 2) in a capacity of 10.
fn saved() -> Vec<u8> {
    let mut buf = ReplayBuffer::new(10, 3, 2).unwrap();
    for t in 0..7 {
        let x = t as f32;
        buf.push(&Transition::new(&[x, x, x], &[x, -x], -1.0, &[x + 1.0; 3], t % 3 == 2, 1.0)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    buf.save(dir.path().join("b.bin")).unwrap();
    std::fs::read(dir.path().join("b.bin")).unwrap()
}

fn load(bytes: &[u8]) -> Result<ReplayBuffer, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.bin");
    std::fs::write(&path, bytes).unwrap();
    ReplayBuffer::load(&path).map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random bytes overwritten (header fields included), or the file cut short.
    #[test]
    fn damaged_replay_files_are_refused_or_consistent(
        edits in prop::collection::vec((0usize..400, any::<u8>()), 1..8),
        header in prop::option::of((0usize..5, any::<u64>())),
        cut in prop::option::of(0usize..400),
    ) {
        let mut bytes = saved();
        for (at, b) in edits {
            let n = bytes.len();
            bytes[at % n] = b;
        }
        if let Some((field, v)) = header {
            bytes[12 + 8 * field..][..8].copy_from_slice(&v.to_le_bytes());
        }
        if let Some(c) = cut {
            bytes.truncate(c.min(bytes.len()));
        }
        if let Ok(b) = load(&bytes) {
            prop_assert!(b.len() <= b.capacity());
            prop_assert_eq!(b.episode_ends().len(), b.len());
        }
    }
}
