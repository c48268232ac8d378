//! The batch of action chunks that [`crate::ReplayBuffer::sample_chunks`] fills.

/// A batch of `B` windows of `h` consecutive transitions s_k, a_k..a_{k+h-1}, s_{k+h}, with
/// the Q-chunking (QC) semantics described on [`crate::ReplayBuffer::sample_chunks`].
/// Row-major `f32` arrays, reused across calls: allocate once with [`ChunkBatch::new`] and
/// sample into it.
///
/// **`masks` (bootstrap) and the stored episode ends are different things.** An episode ends
/// by success *or* time limit (which `valid` reflects); `masks` says whether the TD target may
/// bootstrap from `next_observations`, and is 0 only when the window reached a true terminal
/// state — a time-limit truncation ends the episode but keeps `masks = 1`.
///
/// Validity: once the episode ends at step `i` of a window, steps `i+1..h` belong to another
/// episode (or nothing) and are invalid. Their rewards and masks are not counted, but their
/// actions are still copied (the actor loss masks them per step with `valid`). QC's critic
/// counts a sample only when its **last** step is valid ([`ChunkBatch::last_valid`]): a
/// window that crosses an episode end then drops out of the TD loss, so its `rewards`,
/// `masks` and `next_observations` never matter. (Stopping the sums at the episode end, as
/// here, or running them over all `h` steps gives the same values on those counted samples.)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkBatch {
    /// Number of windows `B`.
    pub batch: usize,
    /// Window length `h` (the action chunk length).
    pub h: usize,
    /// Width of one observation.
    pub obs_dim: usize,
    /// Width of one action.
    pub act_dim: usize,
    /// `[B, obs_dim]`: s_k, the observation at the window's first step.
    pub observations: Vec<f32>,
    /// `[B, h * act_dim]`: the stored actions a_k..a_{k+h-1}, flattened (invalid steps
    /// included).
    pub actions: Vec<f32>,
    /// `[B]`: R = Σ_i γ^i r_{k+i} over the valid steps only (summing stops after the step
    /// where the episode ends).
    pub rewards: Vec<f32>,
    /// `[B]`: bootstrap mask, the minimum of the stored masks over the valid steps: 0 iff the
    /// window reached a true terminal state, 1 at a truncation. Multiplies γ^h·Q(s_{k+h}, ·).
    pub masks: Vec<f32>,
    /// `[B, h]`: valid_0 = 1, valid_i = 1 − (episode ended at one of steps 0..i−1).
    pub valid: Vec<f32>,
    /// `[B, obs_dim]`: the stored next observation of step k+h−1 (= s_{k+h}), the bootstrap
    /// observation.
    pub next_observations: Vec<f32>,
}

impl ChunkBatch {
    /// A zero-filled batch of `batch` windows of `h` steps.
    pub fn new(batch: usize, h: usize, obs_dim: usize, act_dim: usize) -> Self {
        let mut b = Self::default();
        b.resize(batch, h, obs_dim, act_dim);
        b
    }

    /// Gives every array the size of `batch` windows of `h` steps; allocates only when the
    /// arrays grow beyond what they held before.
    pub fn resize(&mut self, batch: usize, h: usize, obs_dim: usize, act_dim: usize) {
        (self.batch, self.h, self.obs_dim, self.act_dim) = (batch, h, obs_dim, act_dim);
        self.observations.resize(batch * obs_dim, 0.0);
        self.actions.resize(batch * h * act_dim, 0.0);
        self.rewards.resize(batch, 0.0);
        self.masks.resize(batch, 0.0);
        self.valid.resize(batch * h, 0.0);
        self.next_observations.resize(batch * obs_dim, 0.0);
    }

    /// `[B]`: `valid` at each window's last step — QC's critic weight (1 when no episode
    /// ends before the window's last step, so that all `h` steps lie in one episode).
    pub fn last_valid(&self) -> impl Iterator<Item = f32> + '_ {
        self.valid.chunks_exact(self.h.max(1)).map(|v| v[v.len() - 1])
    }
}
