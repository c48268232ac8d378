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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReplayError;

    fn columns(n: usize, o: usize, a: usize) -> [Vec<f32>; 6] {
        [vec![0.0; n * o], vec![0.0; n * a], vec![0.0; n], vec![0.0; n], vec![1.0; n], vec![0.0; n * o]]
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
