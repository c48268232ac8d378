//! Offline datasets from scripted demonstrators, with Gymnasium's episode semantics.

use std::fmt;

use mvp_replay::Dataset;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use mvp_envs::{make_native, BranchReach, BranchReachDemo, EnvError, Route};

/// Default standard deviation of the demonstrator's Gaussian action noise.
pub const DEFAULT_DEMO_NOISE_STD: f32 = 0.25;

/// Environments that have a scripted demonstrator.
const DEMO_ENVS: &[&str] = &[BranchReach::NAME];

/// Seed offset of the demonstrator's own random stream (route choice and action noise), so
/// that it differs from the environment's stream seeded with the same `seed`.
const DEMO_STREAM: u64 = 0x9E37_79B9_7F4A_7C15;

/// What a demonstrator rollout produced.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoStats {
    /// Episodes rolled out.
    pub episodes: usize,
    /// Episodes that ended in success.
    pub successes: usize,
    /// Transitions in the dataset (sum of episode lengths).
    pub transitions: usize,
    /// Episodes per route the demonstrator chose, `[left, right]`.
    pub route_counts: [usize; 2],
    /// Successful episodes per route, `[left, right]`.
    pub route_successes: [usize; 2],
}

impl DemoStats {
    /// Fraction of episodes that ended in success (0 when there were none).
    pub fn success_rate(&self) -> f64 {
        if self.episodes == 0 {
            0.0
        } else {
            self.successes as f64 / self.episodes as f64
        }
    }

    /// Mean episode length in steps (0 when there were no episodes).
    pub fn mean_episode_length(&self) -> f64 {
        if self.episodes == 0 {
            0.0
        } else {
            self.transitions as f64 / self.episodes as f64
        }
    }
}

impl fmt::Display for DemoStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} episodes, {} transitions, success {:.3} ({}/{}), mean length {:.1}, routes left {} ({} ok) / right {} ({} ok)",
            self.episodes,
            self.transitions,
            self.success_rate(),
            self.successes,
            self.episodes,
            self.mean_episode_length(),
            self.route_counts[0],
            self.route_successes[0],
            self.route_counts[1],
            self.route_successes[1],
        )
    }
}

/// Rolls out the scripted demonstrator of `env_name` for `episodes` episodes and returns the
/// transitions as a [`Dataset`] plus [`DemoStats`].
///
/// Each episode picks a [`Route`] at random (50/50) and follows it with Gaussian action noise
/// of standard deviation `noise_std` (see [`DEFAULT_DEMO_NOISE_STD`]); the stored action is
/// the one executed (after clipping to [−1, 1]). The environment is reset with `Some(seed)`
/// for the first episode and `None` afterwards; the demonstrator draws from its own stream
/// derived from `seed`. Same arguments → same dataset.
///
/// Gymnasium semantics in the arrays: `next_observations` is the observation returned by
/// `step`, `terminals` is 1 at the last step of every episode (success or time limit), and
/// `masks` is 0 exactly at the steps that reach success (`terminated`), 1 elsewhere.
///
/// Only `"branch-reach-v0"` has a demonstrator; another name gives
/// [`EnvError::NoDemonstrator`] (or [`EnvError::UnknownEnv`] when no such env exists).
pub fn generate_dataset(
    env_name: &str,
    episodes: usize,
    noise_std: f32,
    seed: u64,
) -> anyhow::Result<(Dataset, DemoStats)> {
    let mut env = make_native(env_name)?;
    if !DEMO_ENVS.contains(&env_name) {
        return Err(EnvError::NoDemonstrator {
            name: env_name.to_string(),
            known: DEMO_ENVS.iter().map(|s| s.to_string()).collect(),
        }
        .into());
    }
    let mut demo = BranchReachDemo::new(noise_std)?;
    let mut rng = StdRng::seed_from_u64(seed ^ DEMO_STREAM);
    let (obs_dim, act_dim) = (env.spec().obs_dim, env.spec().action_dim);

    let cap = episodes * env.spec().max_episode_steps / 2;
    let mut observations = Vec::with_capacity(cap * obs_dim);
    let mut actions = Vec::with_capacity(cap * act_dim);
    let mut next_observations = Vec::with_capacity(cap * obs_dim);
    let (mut rewards, mut terminals, mut masks) =
        (Vec::with_capacity(cap), Vec::with_capacity(cap), Vec::with_capacity(cap));
    let mut stats = DemoStats { episodes, successes: 0, transitions: 0, route_counts: [0; 2], route_successes: [0; 2] };

    for episode in 0..episodes {
        let (mut obs, _) = env.reset(if episode == 0 { Some(seed) } else { None })?;
        let route = if rng.random_bool(0.5) { Route::Right } else { Route::Left };
        let r = route as usize;
        stats.route_counts[r] += 1;
        demo.begin_episode(route);
        loop {
            let action = demo.act(&obs, &mut rng);
            let step = env.step(&action)?;
            observations.extend_from_slice(&obs);
            actions.extend_from_slice(&action);
            rewards.push(step.reward);
            terminals.push(if step.done() { 1.0 } else { 0.0 });
            masks.push(step.mask());
            next_observations.extend_from_slice(&step.obs);
            stats.transitions += 1;
            if step.done() {
                if step.info.success {
                    stats.successes += 1;
                    stats.route_successes[r] += 1;
                }
                break;
            }
            obs = step.obs;
        }
    }
    let dataset = Dataset::new(obs_dim, act_dim, observations, actions, rewards, terminals, masks, next_observations)?;
    Ok((dataset, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a dataset into episodes `[start, end)` by its terminals.
    fn episodes(d: &Dataset) -> Vec<(usize, usize)> {
        let mut out = vec![];
        let mut start = 0;
        for (i, &t) in d.terminals.iter().enumerate() {
            if t == 1.0 {
                out.push((start, i + 1));
                start = i + 1;
            }
        }
        assert_eq!(start, d.len(), "dataset must end with a terminal");
        out
    }

    /// The side (−1 left, +1 right) on which an episode passes the obstacle, read from the
    /// positions alone; `None` if it never reaches the obstacle's height.
    fn side(d: &Dataset, (s, e): (usize, usize)) -> Option<f32> {
        (s..e)
            .map(|i| [d.next_observations[2 * i], d.next_observations[2 * i + 1]])
            .find(|p| p[1].abs() < 0.2)
            .map(|p| p[0].signum())
    }

    #[test]
    fn demonstrator_succeeds_often_and_covers_both_routes() {
        let (d, stats) = generate_dataset(BranchReach::NAME, 200, DEFAULT_DEMO_NOISE_STD, 0).unwrap();
        eprintln!("demonstrator: {stats}");
        assert!(stats.success_rate() >= 0.7, "{stats}");
        assert_eq!(stats.route_counts.iter().sum::<usize>(), 200);
        let eps = episodes(&d);
        assert_eq!(eps.len(), 200);
        let left = eps.iter().filter(|&&ep| side(&d, ep) == Some(-1.0)).count();
        let right = eps.iter().filter(|&&ep| side(&d, ep) == Some(1.0)).count();
        // 200 fair coin flips: each side gets 100 ± 7 (1σ); 60 is more than 5σ away.
        assert!(left >= 60 && right >= 60, "left {left}, right {right}");
        assert_eq!([left, right], stats.route_counts, "data and demonstrator disagree on routes");
    }

    #[test]
    fn dataset_follows_terminal_and_mask_conventions() {
        // Very noisy demonstrations, so that both episode endings occur: success
        // (terminal 1, mask 0) and the time limit (terminal 1, mask 1).
        let (d, stats) = generate_dataset(BranchReach::NAME, 50, 2.5, 1).unwrap();
        assert_eq!((d.obs_dim, d.act_dim), (2, 2));
        assert_eq!(d.len(), stats.transitions);
        assert_eq!(d.observations.len(), 2 * d.len());
        assert_eq!(d.actions.len(), 2 * d.len());
        assert_eq!(d.next_observations.len(), 2 * d.len());
        assert!(d.actions.iter().all(|a| (-1.0..=1.0).contains(a)));

        let eps = episodes(&d);
        assert_eq!(eps.len(), 50);
        let mut truncations = 0;
        for &(s, e) in &eps {
            // Inside an episode: not terminal, mask 1, reward −1, and s_{t+1} is the next s.
            for i in s..e - 1 {
                assert_eq!((d.terminals[i], d.masks[i], d.rewards[i]), (0.0, 1.0, -1.0));
                assert_eq!(d.next_observations[2 * i..2 * i + 2], d.observations[2 * i + 2..2 * i + 4]);
            }
            let last = e - 1;
            let success = BranchReach::is_success([d.next_observations[2 * last], d.next_observations[2 * last + 1]]);
            if success {
                assert_eq!((d.masks[last], d.rewards[last]), (0.0, 0.0));
            } else {
                assert_eq!((d.masks[last], d.rewards[last]), (1.0, -1.0));
                assert_eq!(e - s, 100, "a failed episode ends at the time limit");
                truncations += 1;
            }
        }
        // Mask 0 exactly at success steps.
        let zero_masks = d.masks.iter().filter(|&&m| m == 0.0).count();
        assert_eq!(zero_masks, stats.successes);
        assert_eq!(zero_masks + truncations, 50);
        assert!(zero_masks > 0 && truncations > 0, "successes {zero_masks}, truncations {truncations}");
    }

    #[test]
    fn same_seed_gives_same_dataset() {
        let a = generate_dataset(BranchReach::NAME, 20, 0.3, 5).unwrap();
        let b = generate_dataset(BranchReach::NAME, 20, 0.3, 5).unwrap();
        let c = generate_dataset(BranchReach::NAME, 20, 0.3, 6).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn unknown_env_for_dataset_lists_known_names() {
        let msg = generate_dataset("nope-v0", 1, 0.1, 0).unwrap_err().to_string();
        assert!(msg.contains("nope-v0") && msg.contains(BranchReach::NAME), "{msg}");
    }
}
