//! What a dataset holds, checked row by row before training trusts it: episodes and their
//! lengths, the range of its actions, and every value a learner must not see (non-finite
//! numbers, flags that are not flags).

use crate::Dataset;

/// Where a problem first shows in a [`Dataset`]: its row, the episode that row belongs to
/// (episodes counted from 0 as the rows store them) and, for arrays of rows, the column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// Row (transition) index.
    pub row: usize,
    /// Episode index.
    pub episode: usize,
    /// Column within the row (0 for per-row arrays).
    pub column: usize,
}

/// Values of one array that break its contract: how many, and the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Flaw {
    /// The array (`observations`, `actions`, `rewards`, `terminals`, `masks`,
    /// `next_observations`).
    pub key: &'static str,
    /// What is wrong with them.
    pub what: &'static str,
    /// How many values.
    pub count: usize,
    /// The first.
    pub first: At,
}

/// The result of [`Dataset::audit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// Transitions.
    pub transitions: usize,
    /// Episodes: runs of rows closed by a terminal, plus an unclosed last run.
    pub episodes: usize,
    /// The last row does not close its episode.
    pub open_tail: bool,
    /// Shortest and longest episode.
    pub lengths: (usize, usize),
    /// Episodes with a row of reward 0: successes under the rewards of robomimic (`r − 1`) and
    /// OGBench's singletask tasks (`achieved − subgoals`).
    pub successes: usize,
    /// Per action dimension, the smallest and largest finite value.
    pub action_range: Vec<(f32, f32)>,
    /// Non-finite values and flags outside their domain, one entry per array and kind.
    pub flaws: Vec<Flaw>,
}

impl Audit {
    /// Action values outside `[low, high]` per dimension: how many, and the first.
    pub fn actions_outside(data: &Dataset, low: &[f32], high: &[f32]) -> Option<Flaw> {
        let mut flaw: Option<Flaw> = None;
        let ends = episode_index(data);
        for (i, &a) in data.actions.iter().enumerate() {
            let c = i % data.act_dim.max(1);
            if a.is_finite() && (a < low[c] || a > high[c]) {
                let row = i / data.act_dim.max(1);
                let f = flaw.get_or_insert(Flaw {
                    key: "actions",
                    what: "outside the action space",
                    count: 0,
                    first: At { row, episode: ends[row], column: c },
                });
                f.count += 1;
            }
        }
        flaw
    }
}

impl Dataset {
    /// Checks every value: see [`Audit`].
    pub fn audit(&self) -> Audit {
        let episode = episode_index(self);
        let n = self.len();
        let mut flaws = Vec::new();
        let mut scan =
            |key: &'static str, what: &'static str, values: &[f32], width: usize, bad: &dyn Fn(f32) -> bool| {
                let width = width.max(1);
                let mut found: Option<Flaw> = None;
                for (i, _) in values.iter().enumerate().filter(|(_, v)| bad(**v)) {
                    let row = i / width;
                    let f = found.get_or_insert(Flaw {
                        key,
                        what,
                        count: 0,
                        first: At { row, episode: episode[row], column: i % width },
                    });
                    f.count += 1;
                }
                flaws.extend(found);
            };
        let non_finite = |v: f32| !v.is_finite();
        scan("observations", "non-finite", &self.observations, self.obs_dim, &non_finite);
        scan("actions", "non-finite", &self.actions, self.act_dim, &non_finite);
        scan("rewards", "non-finite", &self.rewards, 1, &non_finite);
        scan("next_observations", "non-finite", &self.next_observations, self.obs_dim, &non_finite);
        scan("terminals", "neither 0 nor 1", &self.terminals, 1, &|v| v != 0.0 && v != 1.0);
        scan("masks", "outside [0, 1]", &self.masks, 1, &|v| !(0.0..=1.0).contains(&v));
        let mut lengths = (usize::MAX, 0);
        let (mut start, mut successes, mut success) = (0, 0, false);
        for t in 0..n {
            success |= self.rewards[t] == 0.0;
            if self.terminals[t] != 0.0 || t + 1 == n {
                let len = t + 1 - start;
                lengths = (lengths.0.min(len), lengths.1.max(len));
                successes += usize::from(success);
                (start, success) = (t + 1, false);
            }
        }
        let mut action_range = vec![(f32::INFINITY, f32::NEG_INFINITY); self.act_dim];
        for (i, &a) in self.actions.iter().enumerate().filter(|(_, a)| a.is_finite()) {
            let r = &mut action_range[i % self.act_dim];
            *r = (r.0.min(a), r.1.max(a));
        }
        Audit {
            transitions: n,
            episodes: if n == 0 { 0 } else { episode[n - 1] + 1 },
            open_tail: n > 0 && self.terminals[n - 1] == 0.0,
            lengths: if n == 0 { (0, 0) } else { lengths },
            successes,
            action_range,
            flaws,
        }
    }

    /// Clips every action to `[low, high]` per dimension; returns how many values changed.
    pub fn clip_actions(&mut self, low: &[f32], high: &[f32]) -> usize {
        let width = self.act_dim.max(1);
        let mut changed = 0;
        for (i, a) in self.actions.iter_mut().enumerate() {
            let c = *a;
            *a = a.max(low[i % width]).min(high[i % width]);
            changed += usize::from(*a != c);
        }
        changed
    }
}

/// The episode of each row (a terminal closes its episode).
fn episode_index(data: &Dataset) -> Vec<usize> {
    let mut e = 0;
    data.terminals
        .iter()
        .map(|&t| {
            let this = e;
            e += usize::from(t != 0.0);
            this
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two episodes of 3 and 2 rows, obs width 2, action width 1.
    fn data() -> Dataset {
        let obs: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let next = obs.iter().map(|v| v + 1.0).collect();
        Dataset::new(
            2,
            1,
            obs,
            vec![0.5, -0.5, 1.0, 0.0, -1.0],
            vec![-1.0, -1.0, 0.0, -1.0, -1.0],
            vec![0.0, 0.0, 1.0, 0.0, 1.0],
            vec![1.0, 1.0, 0.0, 1.0, 1.0],
            next,
        )
        .unwrap()
    }

    #[test]
    fn a_clean_dataset_is_summarised() {
        let a = data().audit();
        assert_eq!((a.transitions, a.episodes, a.open_tail, a.lengths, a.successes), (5, 2, false, (2, 3), 1));
        assert_eq!(a.action_range, vec![(-1.0, 1.0)]);
        assert!(a.flaws.is_empty());
    }

    #[test]
    fn non_finite_values_and_bad_flags_are_found_with_their_first_row_and_episode() {
        let mut d = data();
        d.observations[7] = f32::NAN; // row 3 (episode 1), column 1
        d.next_observations[1] = f32::INFINITY;
        d.terminals[2] = 2.0; // still closes episode 0
        d.masks[4] = 2.0;
        d.actions[2] = 50.0;
        let a = d.audit();
        let find = |key: &str| a.flaws.iter().find(|f| f.key == key).cloned().unwrap();
        assert_eq!(find("observations").first, At { row: 3, episode: 1, column: 1 });
        assert_eq!((find("next_observations").count, find("next_observations").first.row), (1, 0));
        assert_eq!((find("terminals").what, find("terminals").first.row), ("neither 0 nor 1", 2));
        assert_eq!(find("masks").first.row, 4);
        assert_eq!(a.flaws.len(), 4, "{:?}", a.flaws);
        let outside = Audit::actions_outside(&d, &[-1.0], &[1.0]).unwrap();
        assert_eq!((outside.count, outside.first.row, outside.first.episode), (1, 2, 0));
        assert_eq!(d.clip_actions(&[-1.0], &[1.0]), 1);
        assert_eq!(d.actions[2], 1.0);
        assert!(Audit::actions_outside(&d, &[-1.0], &[1.0]).is_none());
    }

    #[test]
    fn an_unclosed_last_episode_is_reported() {
        let mut d = data();
        d.terminals[4] = 0.0;
        let a = d.audit();
        assert!(a.open_tail);
        assert_eq!(a.episodes, 2);
    }
}
