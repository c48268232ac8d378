//! Property tests of chunked sampling on random episode structures, before and after the
//! ring wraps: windows never run unmasked past an episode end or across the write head, and
//! rewards, masks, validity and bootstrap observations match a hand computation.

use mvp_replay::{ChunkBatch, Dataset, ReplayBuffer, ReplayError, Transition};
use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

/// One transition as the test remembers it, indexed by its global time `t`.
#[derive(Debug, Clone, Copy)]
struct Step {
    episode: usize,
    reward: f32,
    /// The episode ends after this step (success or time limit).
    end: bool,
    /// The episode ends in a true terminal state (success).
    success: bool,
}

/// Lays out episodes `(length, success)` back to back with the given rewards; when `open`,
/// the last episode is still running (its final step is not an episode end).
fn steps(episodes: &[(usize, bool)], rewards: &[f32], open: bool) -> Vec<Step> {
    let mut out = Vec::new();
    for (e, &(n, success)) in episodes.iter().enumerate() {
        for i in 0..n {
            let end = i + 1 == n && !(open && e + 1 == episodes.len());
            let reward = rewards[out.len() % rewards.len()];
            out.push(Step { episode: e, reward, end, success: end && success });
        }
    }
    out
}

/// Stored arrays of one transition: obs, action, next obs, bootstrap mask.
type Row = ([f32; 2], [f32; 2], [f32; 2], f32);

/// Transition `t` encodes its identity: obs `[t, episode]`, next obs `[t + 0.5, episode]`,
/// action `[t, -t]`.
fn row(t: usize, s: &Step) -> Row {
    let (tf, ef) = (t as f32, s.episode as f32);
    ([tf, ef], [tf, -tf], [tf + 0.5, ef], if s.success { 0.0 } else { 1.0 })
}

fn fill(capacity: usize, steps: &[Step]) -> ReplayBuffer {
    let mut buf = ReplayBuffer::new(capacity, 2, 2).unwrap();
    for (t, s) in steps.iter().enumerate() {
        let (obs, act, next, mask) = row(t, s);
        buf.push(&Transition::new(&obs, &act, s.reward, &next, s.end, mask)).unwrap();
    }
    buf
}

/// Episodes `(length, success)`, a reward table, whether the last episode is still running,
/// capacity, h, gamma and an RNG seed.
type Scenario = (Vec<(usize, bool)>, Vec<f32>, bool, usize, usize, f32, u64);

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec((1usize..=8, any::<bool>()), 1..=12),
        prop::collection::vec(-2.0f32..2.0, 1..=16),
        any::<bool>(),
        1usize..=60,
        1usize..=6,
        prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..=1.0],
        any::<u64>(),
    )
}

/// Checks every sampled window of `out` against the hand computation on `steps`, given that
/// the buffer retains global times `first..steps.len()`.
fn check_batch(out: &ChunkBatch, steps: &[Step], first: usize, gamma: f32) -> Result<(), TestCaseError> {
    let h = out.h;
    for b in 0..out.batch {
        let k = out.observations[2 * b] as usize;
        prop_assert!(k >= first && k + h <= steps.len(), "start {k} outside retained {first}..{}", steps.len());
        prop_assert_eq!(out.observations[2 * b + 1], steps[k].episode as f32);
        let (mut ret, mut discount, mut ended, mut hit_success) = (0.0f32, 1.0f32, false, false);
        for i in 0..h {
            let (t, s) = (k + i, steps[k + i]);
            // Consecutive global times: the window does not straddle the write head.
            let a = &out.actions[(b * h + i) * 2..][..2];
            prop_assert_eq!(a, &[t as f32, -(t as f32)][..]);
            let valid = out.valid[b * h + i];
            prop_assert_eq!(valid, if ended { 0.0 } else { 1.0 });
            // A valid step belongs to the episode of step 0; an invalid one does not.
            prop_assert_eq!(valid == 1.0, s.episode == steps[k].episode, "step {} of window at {}", i, k);
            if !ended {
                ret += discount * s.reward;
                hit_success |= s.success;
                ended = s.end;
            }
            discount *= gamma;
        }
        let tol = 1e-5 * (1.0 + ret.abs());
        prop_assert!((out.rewards[b] - ret).abs() <= tol, "R {} != hand {} at k {}", out.rewards[b], ret, k);
        prop_assert_eq!(out.masks[b] == 0.0, hit_success, "bootstrap mask at k {}", k);
        prop_assert_eq!(out.masks[b], if hit_success { 0.0 } else { 1.0 });
        let last = k + h - 1;
        prop_assert_eq!(&out.next_observations[2 * b..][..2], &[last as f32 + 0.5, steps[last].episode as f32][..]);
    }
    Ok(())
}

proptest! {
    #[test]
    fn sampled_chunks_match_hand_computation((episodes, rewards, open, capacity, h, gamma, seed) in scenario()) {
        let steps = steps(&episodes, &rewards, open);
        let buf = fill(capacity, &steps);
        prop_assert_eq!(buf.len(), steps.len().min(capacity));
        let mut out = ChunkBatch::new(32, h, 2, 2);
        let result = buf.sample_chunks(&mut StdRng::seed_from_u64(seed), 32, h, gamma, &mut out);
        if buf.len() < h {
            let not_enough = matches!(result, Err(ReplayError::NotEnoughData { .. }));
            prop_assert!(not_enough, "{:?}", result);
            return Ok(());
        }
        result.unwrap();
        check_batch(&out, &steps, steps.len() - buf.len(), gamma)?;
    }

    #[test]
    fn every_window_matches_hand_computation_after_wrap_around(
        (episodes, rewards, open, _, h, gamma, _) in scenario(),
        extra in 1usize..40,
    ) {
        // Capacity smaller than the data: the ring has wrapped at least once.
        let steps = steps(&episodes, &rewards, open);
        prop_assume!(steps.len() > h);
        let capacity = h + extra % (steps.len() - h);
        let buf = fill(capacity, &steps);
        let starts: Vec<usize> = (0..buf.num_starts(h)).collect();
        let mut out = ChunkBatch::default();
        buf.chunks_at(&starts, h, gamma, &mut out).unwrap();
        check_batch(&out, &steps, steps.len() - buf.len(), gamma)?;
        // The windows listed are exactly those that fit in the retained data.
        let ks: Vec<usize> = out.observations.chunks(2).map(|o| o[0] as usize).collect();
        prop_assert_eq!(ks, (steps.len() - buf.len()..=steps.len() - h).collect::<Vec<_>>());
    }

    #[test]
    fn dataset_seeding_equals_pushing_and_save_load_resumes_sampling(
        (episodes, rewards, open, capacity, h, gamma, seed) in scenario(),
    ) {
        let steps = steps(&episodes, &rewards, open);
        let pushed = fill(capacity, &steps);
        let rows: Vec<_> = steps.iter().enumerate().map(|(t, s)| row(t, s)).collect();
        let cat = |f: &dyn Fn(&Row) -> Vec<f32>| rows.iter().flat_map(f).collect::<Vec<f32>>();
        let data = Dataset::new(
            2, 2,
            cat(&|r| r.0.to_vec()), cat(&|r| r.1.to_vec()),
            steps.iter().map(|s| s.reward).collect(),
            steps.iter().map(|s| if s.end { 1.0 } else { 0.0 }).collect(),
            cat(&|r| vec![r.3]), cat(&|r| r.2.to_vec()),
        ).unwrap();
        let mut seeded = ReplayBuffer::new(capacity, 2, 2).unwrap();
        seeded.extend_from_dataset(&data).unwrap();
        prop_assert_eq!(seeded.len(), pushed.len());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.bin");
        pushed.save(&path).unwrap();
        let loaded = ReplayBuffer::load(&path).unwrap();
        prop_assume!(pushed.len() >= h);
        let sample = |buf: &ReplayBuffer| {
            let mut out = ChunkBatch::default();
            buf.sample_chunks(&mut StdRng::seed_from_u64(seed), 16, h, gamma, &mut out).unwrap();
            out
        };
        let reference = sample(&pushed);
        prop_assert_eq!(&sample(&seeded), &reference);
        prop_assert_eq!(&sample(&loaded), &reference);
    }
}
