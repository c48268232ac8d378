//! The offline dataset type shared by the OGBench and robomimic readers.

use crate::{check_shape, Result};

/// An offline dataset of `N` single-step transitions in time order, row-major `f32` arrays.
///
/// Episodes lie back to back; each ends with `terminals = 1`. `masks` is the bootstrap mask:
/// 0 where `next_observations` is a true terminal state (success), 1 otherwise — in
/// particular 1 at a time-limit truncation, where `terminals` is 1 too.
///
/// Fields are public so that readers can relabel rewards in place; [`Dataset::validate`]
/// re-checks the shapes (and [`crate::ReplayBuffer::extend_from_dataset`] calls it).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Width of one observation.
    pub obs_dim: usize,
    /// Width of one action.
    pub act_dim: usize,
    /// `[N, obs_dim]`: s_t.
    pub observations: Vec<f32>,
    /// `[N, act_dim]`: a_t.
    pub actions: Vec<f32>,
    /// `[N]`: r_t.
    pub rewards: Vec<f32>,
    /// `[N]`: 1.0 where the episode ends after this step (success or time limit), else 0.0.
    pub terminals: Vec<f32>,
    /// `[N]`: bootstrap mask, 0.0 only where s_{t+1} is a true terminal state.
    pub masks: Vec<f32>,
    /// `[N, obs_dim]`: s_{t+1}.
    pub next_observations: Vec<f32>,
}

impl Dataset {
    /// Builds a dataset; `N` is `rewards.len()` and every other array must match it (the
    /// error names the array and gives the expected and the actual shape).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        obs_dim: usize,
        act_dim: usize,
        observations: Vec<f32>,
        actions: Vec<f32>,
        rewards: Vec<f32>,
        terminals: Vec<f32>,
        masks: Vec<f32>,
        next_observations: Vec<f32>,
    ) -> Result<Self> {
        let d = Self { obs_dim, act_dim, observations, actions, rewards, terminals, masks, next_observations };
        d.validate()?;
        Ok(d)
    }

    /// Checks that every array has `N = rewards.len()` rows of the right width.
    pub fn validate(&self) -> Result<()> {
        let n = self.len();
        check_shape("observations", self.observations.len(), &[n, self.obs_dim])?;
        check_shape("actions", self.actions.len(), &[n, self.act_dim])?;
        check_shape("terminals", self.terminals.len(), &[n])?;
        check_shape("masks", self.masks.len(), &[n])?;
        check_shape("next_observations", self.next_observations.len(), &[n, self.obs_dim])
    }

    /// Number of transitions `N`.
    pub fn len(&self) -> usize {
        self.rewards.len()
    }

    /// Whether the dataset holds no transitions.
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }

    /// The same transitions with each observation replaced by the last `k` observations of its
    /// episode, oldest first (`[s_{t−k+1}, …, s_t]`, width `k · obs_dim`), the episode's first
    /// observation repeated where the episode is younger than `k` steps; next observations
    /// likewise (`[s_{t−k+2}, …, s_{t+1}]`). Episodes are the runs of rows between terminals,
    /// as the rows are stored. An environment stacked the same way
    /// (`mvp_rollout::HistoryPool`) gives the policy the same inputs online. `k` = 1 changes
    /// nothing.
    pub fn with_history(&self, k: usize) -> Self {
        let (n, d) = (self.len(), self.obs_dim);
        if k <= 1 {
            return self.clone();
        }
        let (mut obs, mut next) = (Vec::with_capacity(n * d * k), Vec::with_capacity(n * d * k));
        let mut start = 0;
        for t in 0..n {
            // Frame j of row t (j = 0 oldest) is s_{t−k+1+j}, clamped to the episode's start.
            for j in 0..k {
                let src = (t + j + 1).saturating_sub(k).max(start);
                obs.extend_from_slice(&self.observations[src * d..(src + 1) * d]);
            }
            // Next: frames 1.. of the current window, then s_{t+1}.
            for j in 1..k {
                let src = (t + j + 1).saturating_sub(k).max(start);
                next.extend_from_slice(&self.observations[src * d..(src + 1) * d]);
            }
            next.extend_from_slice(&self.next_observations[t * d..(t + 1) * d]);
            if self.terminals[t] != 0.0 {
                start = t + 1;
            }
        }
        Self { obs_dim: d * k, observations: obs, next_observations: next, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReplayError;

    fn columns(n: usize, o: usize, a: usize) -> [Vec<f32>; 6] {
        [vec![0.0; n * o], vec![0.0; n * a], vec![0.0; n], vec![0.0; n], vec![1.0; n], vec![0.0; n * o]]
    }

    #[test]
    fn history_stacks_within_episodes_and_repeats_each_first_observation() {
        // Two episodes of one-number observations: 1, 2, 3 (→ 4) and 10, 11 (→ 12).
        let o = vec![1.0, 2.0, 3.0, 10.0, 11.0];
        let no = vec![2.0, 3.0, 4.0, 11.0, 12.0];
        let t = vec![0.0, 0.0, 1.0, 0.0, 1.0];
        let d = Dataset::new(1, 1, o, vec![0.0; 5], vec![0.0; 5], t, vec![1.0; 5], no).unwrap();
        let h = d.with_history(2);
        assert_eq!(h.obs_dim, 2);
        assert_eq!(h.observations, [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 10.0, 10.0, 10.0, 11.0]);
        assert_eq!(h.next_observations, [1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 10.0, 11.0, 11.0, 12.0]);
        h.validate().unwrap();
        // Each row's next observation is the following row's observation inside an episode.
        assert_eq!(h.next_observations[..2], h.observations[2..4]);
        assert_eq!(d.with_history(1), d);
        let h3 = d.with_history(3);
        assert_eq!(h3.observations[6..9], [1.0, 2.0, 3.0]);
        assert_eq!(h3.next_observations[6..9], [2.0, 3.0, 4.0]);
    }

    #[test]
    fn new_accepts_consistent_shapes() {
        let [o, a, r, t, m, no] = columns(5, 3, 2);
        let d = Dataset::new(3, 2, o, a, r, t, m, no).unwrap();
        assert_eq!(d.len(), 5);
        assert!(!d.is_empty());
    }

    #[test]
    fn new_reports_both_shapes_on_action_mismatch() {
        let [o, _, r, t, m, no] = columns(5, 3, 2);
        let err = Dataset::new(3, 2, o, vec![0.0; 12], r, t, m, no).unwrap_err();
        match &err {
            ReplayError::Shape { field, expected, got } => {
                assert_eq!((*field, expected.as_slice(), got.as_slice()), ("actions", &[5, 2][..], &[6, 2][..]));
            }
            e => panic!("unexpected error {e}"),
        }
        assert_eq!(err.to_string(), "`actions`: expected shape [5, 2], got [6, 2]");
    }

    #[test]
    fn new_rejects_short_masks_and_ragged_next_observations() {
        let [o, a, r, t, _, no] = columns(4, 3, 1);
        let err = Dataset::new(3, 1, o.clone(), a.clone(), r.clone(), t.clone(), vec![1.0; 3], no).unwrap_err();
        assert_eq!(err.to_string(), "`masks`: expected shape [4], got [3]");
        let err = Dataset::new(3, 1, o, a, r, t, vec![1.0; 4], vec![0.0; 13]).unwrap_err();
        assert_eq!(err.to_string(), "`next_observations`: expected shape [4, 3], got [13]");
    }
}
