//! The episode-aware ring buffer and its chunked sampler.

use rand::Rng;

use crate::{check_shape, ChunkBatch, Dataset, ReplayError, Result, Transition};

/// A fixed-capacity ring of single-step transitions (s, a, r, s', terminal, mask), stored as
/// contiguous row-major `f32` arrays that grow up to `capacity` rows and are then overwritten
/// oldest first.
///
/// Episodes are stored back to back, each closed by a transition with `terminal = true`
/// (a caller that drops an episode without closing it lets windows run on into the next one).
/// The write head (the boundary between the oldest and the newest data) is treated as one
/// more episode boundary: no sampled window ever straddles it.
#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    pub(crate) capacity: usize,
    pub(crate) obs_dim: usize,
    pub(crate) act_dim: usize,
    /// Rows stored, at most `capacity`.
    pub(crate) len: usize,
    /// Row the next push writes (equals `len` until the ring is full).
    pub(crate) pos: usize,
    pub(crate) obs: Vec<f32>,
    pub(crate) next_obs: Vec<f32>,
    pub(crate) actions: Vec<f32>,
    pub(crate) rewards: Vec<f32>,
    /// 1.0 at an episode end (success or time limit), else 0.0.
    pub(crate) terminals: Vec<f32>,
    /// Bootstrap mask: 0.0 only when s' is a true terminal state.
    pub(crate) masks: Vec<f32>,
    /// What every stored reward passes through ([`ReplayBuffer::map_rewards`]).
    pub(crate) reward_map: Option<fn(f32) -> f32>,
}

impl ReplayBuffer {
    /// An empty buffer for `capacity` transitions (memory grows as it fills).
    pub fn new(capacity: usize, obs_dim: usize, act_dim: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(ReplayError::Invalid("replay capacity must be at least 1".into()));
        }
        Ok(Self {
            capacity,
            obs_dim,
            act_dim,
            len: 0,
            pos: 0,
            obs: Vec::new(),
            next_obs: Vec::new(),
            actions: Vec::new(),
            rewards: Vec::new(),
            terminals: Vec::new(),
            masks: Vec::new(),
            reward_map: None,
        })
    }

    /// Passes every reward stored from now on — the dataset's and the online ones alike —
    /// through `map` (e.g. OGBench's sparse option, `env.sparse`): the one place a run's
    /// rewards are transformed.
    pub fn map_rewards(&mut self, map: fn(f32) -> f32) {
        self.reward_map = Some(map);
    }

    /// Number of transitions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no transition is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of transitions held; beyond it the oldest are overwritten.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Width of one observation.
    pub fn obs_dim(&self) -> usize {
        self.obs_dim
    }

    /// Width of one action.
    pub fn act_dim(&self) -> usize {
        self.act_dim
    }

    /// Appends one transition, overwriting the oldest when full. The buffer does not require
    /// `mask = 0` to come with `terminal`; sampling treats the two independently.
    pub fn push(&mut self, t: &Transition) -> Result<()> {
        check_shape("obs", t.obs.len(), &[self.obs_dim])?;
        check_shape("action", t.action.len(), &[self.act_dim])?;
        check_shape("next_obs", t.next_obs.len(), &[self.obs_dim])?;
        if !(0.0..=1.0).contains(&t.mask) {
            return Err(ReplayError::Invalid(format!("bootstrap mask must lie in [0, 1], got {}", t.mask)));
        }
        self.store(&t.obs, &t.action, t.reward, &t.next_obs, t.terminal, t.mask);
        Ok(())
    }

    /// Appends every transition of `data` in order (if it holds more than `capacity`, only
    /// its last `capacity` transitions remain).
    pub fn extend_from_dataset(&mut self, data: &Dataset) -> Result<()> {
        data.validate()?;
        check_shape("dataset observations", data.observations.len(), &[data.len(), self.obs_dim])?;
        check_shape("dataset actions", data.actions.len(), &[data.len(), self.act_dim])?;
        let (od, ad) = (self.obs_dim, self.act_dim);
        for t in data.len().saturating_sub(self.capacity)..data.len() {
            let (o, a) = (&data.observations[t * od..][..od], &data.actions[t * ad..][..ad]);
            let next = &data.next_observations[t * od..][..od];
            self.store(o, a, data.rewards[t], next, data.terminals[t] != 0.0, data.masks[t]);
        }
        Ok(())
    }

    fn store(&mut self, obs: &[f32], action: &[f32], reward: f32, next_obs: &[f32], terminal: bool, mask: f32) {
        let terminal = if terminal { 1.0 } else { 0.0 };
        let reward = self.reward_map.map_or(reward, |map| map(reward));
        if self.len < self.capacity {
            self.obs.extend_from_slice(obs);
            self.next_obs.extend_from_slice(next_obs);
            self.actions.extend_from_slice(action);
            self.rewards.push(reward);
            self.terminals.push(terminal);
            self.masks.push(mask);
            self.len += 1;
        } else {
            let (i, od, ad) = (self.pos, self.obs_dim, self.act_dim);
            self.obs[i * od..][..od].copy_from_slice(obs);
            self.next_obs[i * od..][..od].copy_from_slice(next_obs);
            self.actions[i * ad..][..ad].copy_from_slice(action);
            (self.rewards[i], self.terminals[i], self.masks[i]) = (reward, terminal, mask);
        }
        self.pos = (self.pos + 1) % self.capacity;
    }

    /// Marks the newest transition as an episode end (a truncation: its bootstrap mask is
    /// left as it is). For episodes cut short from outside, e.g. a run resumed with an
    /// environment that cannot restore its state, or a crashed environment worker, so that no
    /// sampled window joins two episodes. Does nothing on an empty buffer.
    pub fn end_episode(&mut self) {
        if self.len > 0 {
            let newest = (self.pos + self.capacity - 1) % self.capacity;
            self.terminals[newest] = 1.0;
        }
    }

    /// Whether each stored transition ends its episode (success, time limit or a cut), oldest
    /// first: the same order as the starts of [`ReplayBuffer::chunks_at`]. For audits.
    pub fn episode_ends(&self) -> Vec<bool> {
        (0..self.len).map(|i| self.terminals[(self.oldest() + i) % self.capacity] != 0.0).collect()
    }

    /// Transitions (oldest first, as in [`ReplayBuffer::episode_ends`]) that do not end their
    /// episode and yet are not followed by that episode's next step: the next stored
    /// observation differs from their next observation. A sound buffer has none; one would
    /// mean two episodes joined (an episode cut without a closing transition) or a lost row.
    pub fn joins(&self) -> Vec<usize> {
        let (d, first) = (self.obs_dim, self.oldest());
        let row = |i: usize| (first + i) % self.capacity;
        (0..self.len.saturating_sub(1))
            .filter(|&i| {
                let (a, b) = (row(i), row(i + 1));
                self.terminals[a] == 0.0
                    && self.next_obs[a * d..(a + 1) * d]
                        .iter()
                        .zip(&self.obs[b * d..(b + 1) * d])
                        .any(|(x, y)| x.to_bits() != y.to_bits())
            })
            .collect()
    }

    /// Row of the oldest stored transition (the write head once the ring is full).
    fn oldest(&self) -> usize {
        (self.pos + self.capacity - self.len) % self.capacity
    }

    /// Number of windows of `h` steps that do not straddle the write head.
    pub fn num_starts(&self, h: usize) -> usize {
        (self.len + 1).saturating_sub(h)
    }

    /// Fills `out` with `batch` windows of `h` steps whose starts are drawn uniformly among
    /// all windows that do not straddle the write head, with QC's semantics (see
    /// [`ChunkBatch`] for each field); `gamma` discounts the chunk reward. `out` is resized
    /// if its shape differs, so one batch can be reused without allocating.
    pub fn sample_chunks<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        batch: usize,
        h: usize,
        gamma: f32,
        out: &mut ChunkBatch,
    ) -> Result<()> {
        let starts = self.prepare(batch, h, gamma, out)?;
        for b in 0..batch {
            self.fill(b, rng.random_range(0..starts), gamma, out);
        }
        Ok(())
    }

    /// Like [`ReplayBuffer::sample_chunks`], but the first `round(share_after · batch)` windows
    /// start at or after row `split` (counted from the oldest stored row) and the others
    /// before it: a fixed mix of two regions, e.g. the dataset (loaded first) and the online
    /// data after it. A region with no window start gives its share to the other.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_chunks_split<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        batch: usize,
        h: usize,
        gamma: f32,
        split: usize,
        share_after: f64,
        out: &mut ChunkBatch,
    ) -> Result<()> {
        let starts = self.prepare(batch, h, gamma, out)?;
        let split = split.min(starts);
        let after = if split == 0 {
            batch
        } else if split == starts {
            0
        } else {
            ((share_after.clamp(0.0, 1.0) * batch as f64).round() as usize).min(batch)
        };
        for b in 0..batch {
            let start = if b < after { rng.random_range(split..starts) } else { rng.random_range(0..split) };
            self.fill(b, start, gamma, out);
        }
        Ok(())
    }

    /// Like [`ReplayBuffer::sample_chunks`] at chosen starts: `starts[b]` counts from the
    /// oldest stored transition (0) and must be below [`ReplayBuffer::num_starts`]`(h)`.
    pub fn chunks_at(&self, starts: &[usize], h: usize, gamma: f32, out: &mut ChunkBatch) -> Result<()> {
        let n = self.prepare(starts.len(), h, gamma, out)?;
        if let Some(&s) = starts.iter().find(|&&s| s >= n) {
            return Err(ReplayError::Invalid(format!("window start {s} out of range 0..{n} for h = {h}")));
        }
        for (b, &s) in starts.iter().enumerate() {
            self.fill(b, s, gamma, out);
        }
        Ok(())
    }

    /// Checks the arguments, shapes `out`, and returns the number of possible starts.
    fn prepare(&self, batch: usize, h: usize, gamma: f32, out: &mut ChunkBatch) -> Result<usize> {
        if h == 0 {
            return Err(ReplayError::Invalid("chunk length h must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&gamma) {
            return Err(ReplayError::Invalid(format!("discount gamma must lie in [0, 1], got {gamma}")));
        }
        if self.len < h {
            return Err(ReplayError::NotEnoughData { len: self.len, h });
        }
        out.resize(batch, h, self.obs_dim, self.act_dim);
        Ok(self.num_starts(h))
    }

    /// Writes window `b` of `out` from the window starting `start` rows after the oldest.
    fn fill(&self, b: usize, start: usize, gamma: f32, out: &mut ChunkBatch) {
        let (od, ad, h) = (self.obs_dim, self.act_dim, out.h);
        let k = (self.oldest() + start) % self.capacity;
        out.observations[b * od..][..od].copy_from_slice(&self.obs[k * od..][..od]);
        let (mut ret, mut discount, mut mask, mut ended) = (0.0, 1.0, 1.0f32, false);
        let mut j = k;
        for i in 0..h {
            j = (k + i) % self.capacity;
            out.actions[(b * h + i) * ad..][..ad].copy_from_slice(&self.actions[j * ad..][..ad]);
            out.valid[b * h + i] = if ended { 0.0 } else { 1.0 };
            // Steps after the episode end belong to another episode: they add no reward and
            // do not touch the bootstrap mask.
            if !ended {
                ret += discount * self.rewards[j];
                mask = mask.min(self.masks[j]);
                ended = self.terminals[j] != 0.0;
            }
            discount *= gamma;
        }
        out.rewards[b] = ret;
        out.masks[b] = mask;
        out.next_observations[b * od..][..od].copy_from_slice(&self.next_obs[j * od..][..od]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    /// Pushes one episode of `rewards.len()` steps; observation t of the buffer's life is
    /// `[t]`, its next observation `[t + 0.5]`, its action `[10 t]`. `success`: the last step
    /// is a true terminal (mask 0); otherwise it is a time-limit truncation (mask 1).
    fn push_episode(buf: &mut ReplayBuffer, t0: &mut usize, rewards: &[f32], success: bool) {
        for (i, &r) in rewards.iter().enumerate() {
            let t = *t0 as f32;
            let last = i + 1 == rewards.len();
            let mask = if last && success { 0.0 } else { 1.0 };
            buf.push(&Transition::new(&[t], &[10.0 * t], r, &[t + 0.5], last, mask)).unwrap();
            *t0 += 1;
        }
    }

    fn chunk(buf: &ReplayBuffer, start: usize, h: usize, gamma: f32) -> ChunkBatch {
        let mut out = ChunkBatch::new(1, h, 1, 1);
        buf.chunks_at(&[start], h, gamma, &mut out).unwrap();
        out
    }

    #[test]
    fn joins_name_the_transitions_whose_episode_does_not_go_on_in_the_next_row() {
        let step = |o: f32, next: f32, end: bool| Transition::new(&[o], &[0.0], 0.0, &[next], end, 1.0);
        let mut buf = ReplayBuffer::new(4, 1, 1).unwrap();
        for t in [step(0.0, 1.0, false), step(1.0, 2.0, true), step(5.0, 6.0, false), step(6.0, 7.0, false)] {
            buf.push(&t).unwrap();
        }
        assert!(buf.joins().is_empty(), "an end, then an episode that goes on");
        // The ring wraps: the oldest row is now 1.0 → 2.0 (an end), then 5, 6, and 9 does not
        // continue 6 → 7 without an end between them.
        buf.push(&step(9.0, 10.0, false)).unwrap();
        assert_eq!(buf.joins(), vec![2], "the row that should have ended its episode, oldest first");
    }

    #[test]
    fn split_sampling_draws_the_asked_share_from_each_region() {
        let mut buf = ReplayBuffer::new(100, 1, 1).unwrap();
        let mut t0 = 0;
        push_episode(&mut buf, &mut t0, &[0.0; 60], true); // rows 0..60: "dataset"
        push_episode(&mut buf, &mut t0, &[0.0; 40], false); // rows 60..100: "online"
        let mut rng = StdRng::seed_from_u64(3);
        let mut out = ChunkBatch::new(200, 1, 1, 1);
        buf.sample_chunks_split(&mut rng, 200, 1, 0.99, 60, 0.25, &mut out).unwrap();
        let after = out.observations.iter().filter(|&&o| o >= 60.0).count();
        assert_eq!(after, 50, "a quarter of the windows from the second region");
        assert!(out.observations[..50].iter().all(|&o| o >= 60.0));
        assert!(out.observations[50..].iter().all(|&o| o < 60.0));
        // No row after the split: everything comes from before it.
        buf.sample_chunks_split(&mut rng, 200, 1, 0.99, 100, 0.5, &mut out).unwrap();
        assert!(out.observations.iter().all(|&o| o < 100.0));
        // No row before it: everything from after.
        buf.sample_chunks_split(&mut rng, 200, 1, 0.99, 0, 0.5, &mut out).unwrap();
        assert!(out.observations.iter().any(|&o| o < 60.0));
    }

    #[test]
    fn len_counts_pushes_up_to_capacity() {
        let mut buf = ReplayBuffer::new(3, 1, 1).unwrap();
        assert!(buf.is_empty());
        push_episode(&mut buf, &mut 0, &[0.0; 2], true);
        assert_eq!((buf.len(), buf.capacity()), (2, 3));
        push_episode(&mut buf, &mut 2, &[0.0; 5], true);
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn ring_buffer_overwrites_oldest() {
        let mut buf = ReplayBuffer::new(4, 1, 1).unwrap();
        push_episode(&mut buf, &mut 0, &[0.0; 6], false);
        // Transitions 0 and 1 were overwritten; the oldest is now 2, in row 2.
        assert_eq!(buf.obs, vec![4.0, 5.0, 2.0, 3.0]);
        assert_eq!(chunk(&buf, 0, 1, 0.9).observations, vec![2.0]);
        assert_eq!(chunk(&buf, 3, 1, 0.9).observations, vec![5.0]);
    }

    #[test]
    fn windows_never_straddle_the_write_head() {
        let mut buf = ReplayBuffer::new(5, 1, 1).unwrap();
        push_episode(&mut buf, &mut 0, &[0.0; 7], false); // rows hold 5 6 2 3 4, head at row 2
        assert_eq!(buf.num_starts(3), 3);
        let mut out = ChunkBatch::new(64, 3, 1, 1);
        buf.sample_chunks(&mut StdRng::seed_from_u64(0), 64, 3, 0.9, &mut out).unwrap();
        let mut seen = [false; 3];
        for (b, a) in out.actions.chunks(3).enumerate() {
            let s = out.observations[b];
            assert_eq!(a, [10.0 * s, 10.0 * (s + 1.0), 10.0 * (s + 2.0)], "window crosses the head");
            seen[s as usize - 2] = true;
        }
        assert_eq!(seen, [true; 3], "every start 2, 3, 4 is drawn");
        assert!(buf.chunks_at(&[3], 3, 0.9, &mut out).is_err());
    }

    #[test]
    fn chunk_stops_reward_at_episode_end() {
        let mut buf = ReplayBuffer::new(16, 1, 1).unwrap();
        let mut t = 0;
        push_episode(&mut buf, &mut t, &[-1.0, -1.0, 0.0], true);
        push_episode(&mut buf, &mut t, &[-5.0, -5.0, -5.0], false);
        let c = chunk(&buf, 1, 4, 0.5); // steps 1, 2 (success) | 3, 4 of the next episode
        assert_eq!(c.rewards, vec![-1.0]);
        assert_eq!(c.valid, vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(c.masks[0], 0.0);
        assert_eq!(c.actions, vec![10.0, 20.0, 30.0, 40.0], "invalid actions are still copied");
        assert_eq!(c.next_observations, vec![4.5], "s_{{k+h}} is the next obs of step k+h-1");
        assert_eq!(c.last_valid().collect::<Vec<_>>(), vec![0.0]);
    }

    #[test]
    fn chunk_inside_one_episode_sums_discounted_rewards() {
        let mut buf = ReplayBuffer::new(16, 1, 1).unwrap();
        push_episode(&mut buf, &mut 0, &[1.0, 2.0, 4.0, 8.0, 0.0], false);
        let c = chunk(&buf, 1, 3, 0.5);
        assert_eq!(c.rewards, vec![2.0 + 0.5 * 4.0 + 0.25 * 8.0]);
        assert_eq!((c.valid.as_slice(), c.masks[0]), (&[1.0; 3][..], 1.0));
        assert_eq!((c.observations[0], c.next_observations[0]), (1.0, 3.5));
    }

    #[test]
    fn bootstrap_mask_is_zero_at_true_terminal_but_one_at_truncation() {
        let mut buf = ReplayBuffer::new(16, 1, 1).unwrap();
        let mut t = 0;
        push_episode(&mut buf, &mut t, &[0.0; 3], true); // success at step 2
        push_episode(&mut buf, &mut t, &[0.0; 3], false); // time limit at step 5
        let success = chunk(&buf, 1, 2, 0.9);
        assert_eq!(success.masks[0], 0.0);
        let truncated = chunk(&buf, 4, 2, 0.9);
        assert_eq!(truncated.masks[0], 1.0);
        assert_eq!(truncated.last_valid().collect::<Vec<_>>(), vec![1.0]);
    }

    #[test]
    fn mask_ignores_terminals_after_a_truncation() {
        let mut buf = ReplayBuffer::new(16, 1, 1).unwrap();
        let mut t = 0;
        push_episode(&mut buf, &mut t, &[0.0; 2], false); // truncated at step 1
        push_episode(&mut buf, &mut t, &[0.0; 1], true); // success at step 2, next episode
        let c = chunk(&buf, 0, 3, 0.9);
        assert_eq!((c.valid.as_slice(), c.masks[0]), (&[1.0, 1.0, 0.0][..], 1.0));
    }

    #[test]
    fn sampling_reuses_and_reshapes_the_batch() {
        let mut buf = ReplayBuffer::new(8, 2, 3).unwrap();
        for t in 0..8 {
            buf.push(&Transition::new(&[t as f32; 2], &[0.0; 3], 0.0, &[0.0; 2], t % 4 == 3, 1.0)).unwrap();
        }
        let mut out = ChunkBatch::new(4, 2, 2, 3);
        let mut rng = StdRng::seed_from_u64(1);
        buf.sample_chunks(&mut rng, 5, 3, 0.99, &mut out).unwrap();
        assert_eq!((out.actions.len(), out.valid.len(), out.observations.len()), (5 * 9, 15, 10));
    }

    #[test]
    fn push_rejects_bad_shapes_and_masks() {
        let mut buf = ReplayBuffer::new(4, 3, 2).unwrap();
        let err = buf.push(&Transition::new(&[0.0; 3], &[0.0; 3], 0.0, &[0.0; 3], false, 1.0)).unwrap_err();
        assert_eq!(err.to_string(), "`action`: expected shape [2], got [3]");
        assert!(buf.push(&Transition::new(&[0.0; 2], &[0.0; 2], 0.0, &[0.0; 3], false, 1.0)).is_err());
        assert!(buf.push(&Transition::new(&[0.0; 3], &[0.0; 2], 0.0, &[0.0; 4], false, 1.0)).is_err());
        assert!(buf.push(&Transition::new(&[0.0; 3], &[0.0; 2], 0.0, &[0.0; 3], true, 2.0)).is_err());
        assert!(buf.is_empty());
        assert!(ReplayBuffer::new(0, 3, 2).is_err());
    }

    #[test]
    fn sampling_rejects_bad_arguments() {
        let mut buf = ReplayBuffer::new(4, 1, 1).unwrap();
        push_episode(&mut buf, &mut 0, &[0.0; 2], true);
        let (mut out, mut rng) = (ChunkBatch::default(), StdRng::seed_from_u64(0));
        let err = buf.sample_chunks(&mut rng, 2, 3, 0.9, &mut out).unwrap_err();
        assert!(matches!(err, ReplayError::NotEnoughData { len: 2, h: 3 }));
        assert!(buf.sample_chunks(&mut rng, 2, 0, 0.9, &mut out).is_err());
        assert!(buf.sample_chunks(&mut rng, 2, 1, 1.5, &mut out).is_err());
        assert!(buf.sample_chunks(&mut rng, 2, 2, 0.9, &mut out).is_ok());
    }

    #[test]
    fn extend_from_dataset_copies_rows_and_keeps_the_newest() {
        let n = 6;
        let obs: Vec<f32> = (0..2 * n).map(|v| v as f32).collect();
        let next: Vec<f32> = obs.iter().map(|v| v + 100.0).collect();
        let terminals = vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let masks = vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let rewards: Vec<f32> = (0..n).map(|v| v as f32).collect();
        let d = Dataset::new(2, 1, obs, rewards.clone(), rewards, terminals, masks, next).unwrap();
        let mut buf = ReplayBuffer::new(4, 2, 1).unwrap();
        buf.extend_from_dataset(&d).unwrap();
        assert_eq!(buf.len(), 4);
        assert_eq!(buf.obs, (4..12).map(|v| v as f32).collect::<Vec<_>>());
        assert_eq!(buf.next_obs[0], 104.0);
        assert_eq!(
            (buf.terminals.as_slice(), buf.masks.as_slice()),
            (&[1.0, 0.0, 0.0, 1.0][..], &[0.0, 1.0, 1.0, 1.0][..])
        );
        let mut wrong = ReplayBuffer::new(4, 3, 1).unwrap();
        assert!(wrong.extend_from_dataset(&d).is_err());
    }

    #[test]
    fn mapped_rewards_apply_to_dataset_and_online_rows_and_survive_a_restore() {
        let d = Dataset::new(
            1,
            1,
            vec![0.0, 1.0],
            vec![0.0; 2],
            vec![-0.5, 0.0],
            vec![0.0, 1.0],
            vec![1.0; 2],
            vec![1.0, 2.0],
        )
        .unwrap();
        let mut buf = ReplayBuffer::new(8, 1, 1).unwrap();
        buf.map_rewards(|r| if r == 0.0 { 0.0 } else { -1.0 });
        buf.extend_from_dataset(&d).unwrap();
        buf.push(&Transition::new(&[2.0], &[0.0], -0.25, &[3.0], false, 1.0)).unwrap();
        assert_eq!(buf.rewards, vec![-1.0, 0.0, -1.0], "once each, dataset and online alike");
        let dir = tempfile::tempdir().unwrap();
        buf.save(dir.path().join("b.bin")).unwrap();
        let mut back = ReplayBuffer::new(8, 1, 1).unwrap();
        back.map_rewards(|r| r * 10.0);
        back.restore(dir.path().join("b.bin")).unwrap();
        assert_eq!(back.rewards, buf.rewards, "a restored buffer is not mapped again");
        back.push(&Transition::new(&[3.0], &[0.0], -0.25, &[4.0], false, 1.0)).unwrap();
        assert_eq!(back.rewards[3], -2.5, "its own map applies to what comes after");
    }

    #[test]
    fn end_episode_cuts_windows_at_the_newest_transition() {
        let mut buf = ReplayBuffer::new(16, 1, 1).unwrap();
        for i in 0..6 {
            buf.push(&Transition::new(&[i as f32], &[0.0], -1.0, &[i as f32 + 1.0], false, 1.0)).unwrap();
        }
        buf.end_episode();
        buf.push(&Transition::new(&[100.0], &[0.0], -1.0, &[101.0], false, 1.0)).unwrap();
        let mut out = ChunkBatch::new(1, 3, 1, 1);
        buf.chunks_at(&[4], 3, 1.0, &mut out).unwrap();
        assert_eq!(out.valid, vec![1.0, 1.0, 0.0], "the window crossed the cut");
        assert_eq!(out.masks, vec![1.0], "a cut is a truncation: it keeps the bootstrap mask");
        assert_eq!(out.rewards, vec![-2.0]);
    }
}
