//! `branch-reach-v0`: a 2-D point mass that reaches a goal past an obstacle, on the left or
//! the right — a fast test task whose good behaviour is multimodal.
//!
//! ```text
//!   y = 1  +---------------------------+
//!          |           (goal)          |   goal: disc of radius 0.15 at (0, 0.8)
//!          |                           |
//!   y=0.2  |      +-------------+      |   obstacle: open box x ∈ (−0.4, 0.4),
//!          | left |  obstacle   | right|             y ∈ (−0.2, 0.2)
//!   y=−0.2 |      +-------------+      |   gaps: x ∈ [−1, −0.4] and [0.4, 1]
//!          |                           |
//!          |           start           |   start: x ~ U[−0.1, 0.1], y ~ U[−0.85, −0.75]
//!   y = −1 +---------------------------+
//!        x = −1                      x = 1
//! ```
//!
//! Dynamics: p ← p + 0.1·clip(a, −1, 1), resolved one axis at a time (x, then y); a move
//! into the obstacle stops at its face (the agent slides along it) and the arena walls clamp
//! the position. Observation = p (2-D). Reward (OGBench's sparse convention) is computed on
//! the new state: 0.0 when it is in the goal (then `terminated`, `info.success`), −1.0
//! otherwise. Time limit 100 steps.
//!
//! The mean of the two good routes — straight up — runs into the obstacle and stays there.
//! A route needs about 25 steps, so a chunked policy (chunks of 5 open-loop actions) has
//! ample slack.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::{Env, EnvError, EnvSpec, Info, Step};

/// Displacement per unit action per step.
const STEP_SIZE: f32 = 0.1;
/// Arena half-width: positions stay in [−1, 1]².
const ARENA: f32 = 1.0;
/// Obstacle: the open box (x0, x1) × (y0, y1).
const OBSTACLE: [f32; 4] = [-0.4, 0.4, -0.2, 0.2];
/// Goal disc centre.
const GOAL: [f32; 2] = [0.0, 0.8];
/// Goal disc radius.
const GOAL_RADIUS: f32 = 0.15;
/// Start: x ~ U[−START_HALF_WIDTH, START_HALF_WIDTH], y ~ START_Y + U[−START_HALF_WIDTH/2, ..].
const START_Y: f32 = -0.8;
const START_HALF_WIDTH: f32 = 0.1;
const MAX_EPISODE_STEPS: usize = 100;

/// The `branch-reach-v0` environment (see the module docs for the geometry).
#[derive(Debug, Clone)]
pub struct BranchReach {
    spec: EnvSpec,
    pos: [f32; 2],
    t: usize,
    running: bool,
    rng: Option<StdRng>,
}

impl Default for BranchReach {
    fn default() -> Self {
        Self::new()
    }
}

impl BranchReach {
    /// Registered name.
    pub const NAME: &'static str = "branch-reach-v0";

    /// A new environment; call [`Env::reset`] before stepping.
    pub fn new() -> Self {
        Self {
            spec: EnvSpec {
                name: Self::NAME.to_string(),
                obs_dim: 2,
                action_dim: 2,
                action_low: vec![-1.0; 2],
                action_high: vec![1.0; 2],
                max_episode_steps: MAX_EPISODE_STEPS,
            },
            pos: [0.0, START_Y],
            t: 0,
            running: false,
            rng: None,
        }
    }

    /// The current position of the point mass.
    pub fn position(&self) -> [f32; 2] {
        self.pos
    }

    /// Steps taken in the current episode.
    pub fn elapsed_steps(&self) -> usize {
        self.t
    }

    /// Whether `p` lies in the goal disc.
    pub fn is_success(p: [f32; 2]) -> bool {
        let (dx, dy) = (p[0] - GOAL[0], p[1] - GOAL[1]);
        dx * dx + dy * dy <= GOAL_RADIUS * GOAL_RADIUS
    }

    /// Whether `p` lies strictly inside the obstacle (never true for a reachable position).
    pub fn in_obstacle(p: [f32; 2]) -> bool {
        let [x0, x1, y0, y1] = OBSTACLE;
        p[0] > x0 && p[0] < x1 && p[1] > y0 && p[1] < y1
    }

    /// One move of `delta` along one axis from `from` (the other coordinate is `across`),
    /// stopped by the arena walls and by the obstacle's faces.
    fn move_axis(from: f32, delta: f32, across: f32, lo: f32, hi: f32, across_lo: f32, across_hi: f32) -> f32 {
        let mut to = (from + delta).clamp(-ARENA, ARENA);
        if across > across_lo && across < across_hi {
            // The obstacle spans this line: stop at the face we would cross.
            if from <= lo && to > lo {
                to = lo;
            } else if from >= hi && to < hi {
                to = hi;
            }
        }
        to
    }
}

impl Env for BranchReach {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    /// Position, step count and whether an episode runs (the dynamics are deterministic; the
    /// generator only draws start positions at seeded resets).
    fn snapshot(&self) -> Option<Vec<u8>> {
        let mut b = Vec::with_capacity(17);
        b.extend(self.pos[0].to_le_bytes());
        b.extend(self.pos[1].to_le_bytes());
        b.extend((self.t as u64).to_le_bytes());
        b.push(self.running as u8);
        Some(b)
    }

    fn restore(&mut self, state: &[u8]) -> anyhow::Result<()> {
        if state.len() != 17 {
            anyhow::bail!("{} snapshot has {} bytes, expected 17", Self::NAME, state.len());
        }
        let f = |i: usize| f32::from_le_bytes(state[i..i + 4].try_into().expect("4 bytes"));
        self.pos = [f(0), f(4)];
        self.t = u64::from_le_bytes(state[8..16].try_into().expect("8 bytes")) as usize;
        self.running = state[16] != 0;
        Ok(())
    }

    fn reset(&mut self, seed: Option<u64>) -> anyhow::Result<(Vec<f32>, Info)> {
        if let Some(seed) = seed {
            self.rng = Some(StdRng::seed_from_u64(seed));
        }
        let rng = self.rng.get_or_insert_with(StdRng::from_os_rng);
        let x = rng.random_range(-START_HALF_WIDTH..=START_HALF_WIDTH);
        let y = START_Y + rng.random_range(-START_HALF_WIDTH / 2.0..=START_HALF_WIDTH / 2.0);
        self.pos = [x, y];
        self.t = 0;
        self.running = true;
        Ok((self.pos.to_vec(), Info { success: Self::is_success(self.pos) }))
    }

    fn step(&mut self, action: &[f32]) -> anyhow::Result<Step> {
        if !self.running {
            return Err(EnvError::NoEpisode.into());
        }
        if action.len() != self.spec.action_dim {
            return Err(EnvError::ActionDim { expected: self.spec.action_dim, got: action.len() }.into());
        }
        if !action.iter().all(|a| a.is_finite()) {
            return Err(EnvError::NonFiniteAction(action.to_vec()).into());
        }
        let a = [action[0].clamp(-1.0, 1.0), action[1].clamp(-1.0, 1.0)];
        let [x0, x1, y0, y1] = OBSTACLE;
        let [x, y] = self.pos;
        let x = Self::move_axis(x, STEP_SIZE * a[0], y, x0, x1, y0, y1);
        let y = Self::move_axis(y, STEP_SIZE * a[1], x, y0, y1, x0, x1);
        self.pos = [x, y];
        self.t += 1;

        // Reward, success and termination all describe the new state s_{t+1}.
        let success = Self::is_success(self.pos);
        let terminated = success;
        let truncated = !terminated && self.t >= self.spec.max_episode_steps;
        self.running = !(terminated || truncated);
        Ok(Step {
            obs: self.pos.to_vec(),
            reward: if success { 0.0 } else { -1.0 },
            terminated,
            truncated,
            info: Info { success },
        })
    }
}

/// Which side of the obstacle a [`BranchReach`] trajectory passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Through the gap at x < −0.4.
    Left,
    /// Through the gap at x > 0.4.
    Right,
}

impl Route {
    /// Both routes, left first.
    pub const ALL: [Route; 2] = [Route::Left, Route::Right];

    /// −1 for left, +1 for right.
    fn sign(self) -> f32 {
        match self {
            Route::Left => -1.0,
            Route::Right => 1.0,
        }
    }
}

/// Scripted demonstrator for [`BranchReach`]: a proportional controller through the
/// waypoints of one [`Route`] (below the gap, above the gap, the goal), with Gaussian action
/// noise.
///
/// Per step: `a = clip(d / max(1, |d|_∞) + noise_std·ε, −1, 1)` with `d = 10·(w − p)` (full
/// speed towards the waypoint `w`, direction kept when scaling down) and `ε ~ N(0, I)`; the
/// next waypoint is taken when `p` is within 0.1 of the current one.
#[derive(Debug, Clone)]
pub struct BranchReachDemo {
    noise_std: f32,
    gain: f32,
    route: Route,
    waypoint: usize,
}

impl BranchReachDemo {
    /// Proportional gain of the controller.
    const GAIN: f32 = 10.0;
    /// Distance at which a waypoint counts as reached.
    const WAYPOINT_TOL: f32 = 0.1;
    /// x of the gap centres (±) and y of the waypoints below/above the obstacle (±).
    const GAP_X: f32 = 0.7;
    const PASS_Y: f32 = 0.35;

    /// A demonstrator with action noise of standard deviation `noise_std` (≥ 0, finite),
    /// set to the left route until [`begin_episode`](Self::begin_episode) is called.
    pub fn new(noise_std: f32) -> anyhow::Result<Self> {
        if !(noise_std.is_finite() && noise_std >= 0.0) {
            return Err(EnvError::Invalid(format!("noise_std must be finite and >= 0, got {noise_std}")).into());
        }
        Ok(Self { noise_std, gain: Self::GAIN, route: Route::Left, waypoint: 0 })
    }

    /// Starts an episode along `route`.
    pub fn begin_episode(&mut self, route: Route) {
        self.route = route;
        self.waypoint = 0;
    }

    /// The route of the current episode.
    pub fn route(&self) -> Route {
        self.route
    }

    fn waypoints(&self) -> [[f32; 2]; 3] {
        let x = self.route.sign() * Self::GAP_X;
        [[x, -Self::PASS_Y], [x, Self::PASS_Y], GOAL]
    }

    /// The action for observation `obs` (a [`BranchReach`] observation), drawing the noise
    /// from `rng` (no draws when `noise_std` is 0).
    pub fn act<R: Rng + ?Sized>(&mut self, obs: &[f32], rng: &mut R) -> [f32; 2] {
        let p = [obs[0], obs[1]];
        let wps = self.waypoints();
        while self.waypoint + 1 < wps.len() {
            let w = wps[self.waypoint];
            if (w[0] - p[0]).hypot(w[1] - p[1]) < Self::WAYPOINT_TOL {
                self.waypoint += 1;
            } else {
                break;
            }
        }
        let w = wps[self.waypoint];
        let d = [self.gain * (w[0] - p[0]), self.gain * (w[1] - p[1])];
        let scale = d[0].abs().max(d[1].abs()).max(1.0);
        let mut a = [d[0] / scale, d[1] / scale];
        if self.noise_std > 0.0 {
            for ai in &mut a {
                let eps: f32 = rng.sample(StandardNormal);
                *ai += self.noise_std * eps;
            }
        }
        a.map(|ai| ai.clamp(-1.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `policy` for one episode from `seed`; returns the steps and the positions visited.
    fn rollout(seed: u64, mut policy: impl FnMut(&[f32]) -> [f32; 2]) -> (Vec<Step>, Vec<[f32; 2]>) {
        let mut env = BranchReach::new();
        let (mut obs, _) = env.reset(Some(seed)).unwrap();
        let (mut steps, mut path) = (vec![], vec![env.position()]);
        loop {
            let step = env.step(&policy(&obs)).unwrap();
            obs = step.obs.clone();
            path.push(env.position());
            let done = step.done();
            steps.push(step);
            if done {
                return (steps, path);
            }
        }
    }

    fn scripted(route: Route) -> impl FnMut(&[f32]) -> [f32; 2] {
        let mut demo = BranchReachDemo::new(0.0).unwrap();
        demo.begin_episode(route);
        let mut rng = StdRng::seed_from_u64(0);
        move |obs| demo.act(obs, &mut rng)
    }

    #[test]
    fn same_seed_gives_same_trajectory() {
        let mut noise = StdRng::seed_from_u64(7);
        let actions: Vec<[f32; 2]> =
            (0..100).map(|_| [noise.random_range(-1.0..1.0), noise.random_range(-1.0..1.0)]).collect();
        let run = |seed| {
            let mut i = 0;
            rollout(seed, |_| {
                i += 1;
                actions[i - 1]
            })
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3).1[0], run(4).1[0], "different seeds should start elsewhere");
    }

    #[test]
    fn reset_without_seed_continues_the_seeded_stream() {
        let mut a = BranchReach::new();
        let mut b = BranchReach::new();
        let first = a.reset(Some(11)).unwrap().0;
        assert_eq!(b.reset(Some(11)).unwrap().0, first);
        let second = a.reset(None).unwrap().0;
        assert_ne!(second, first);
        assert_eq!(b.reset(None).unwrap().0, second);
    }

    #[test]
    fn time_limit_sets_truncated_not_terminated() {
        let (steps, _) = rollout(0, |_| [0.0, 0.0]);
        assert_eq!(steps.len(), MAX_EPISODE_STEPS);
        let last = steps.last().unwrap();
        assert!(last.truncated && !last.terminated && !last.info.success);
        assert_eq!((last.mask(), last.reward), (1.0, -1.0));
        assert!(steps[..steps.len() - 1].iter().all(|s| !s.done()));
    }

    #[test]
    fn success_sets_terminated_and_zero_reward() {
        let (steps, path) = rollout(0, scripted(Route::Left));
        let last = steps.last().unwrap();
        assert!(last.terminated && !last.truncated && last.info.success);
        assert_eq!((last.reward, last.mask()), (0.0, 0.0));
        assert!(BranchReach::is_success(*path.last().unwrap()));
        assert!(steps[..steps.len() - 1].iter().all(|s| s.reward == -1.0 && !s.info.success && !s.done()));
    }

    #[test]
    fn step_after_episode_end_is_an_error() {
        let mut env = BranchReach::new();
        let err = env.step(&[0.0, 0.0]).unwrap_err();
        assert_eq!(err.downcast_ref::<EnvError>(), Some(&EnvError::NoEpisode));
        env.reset(Some(0)).unwrap();
        for _ in 0..MAX_EPISODE_STEPS {
            env.step(&[0.0, 0.0]).unwrap();
        }
        assert!(env.step(&[0.0, 0.0]).is_err());
        env.reset(None).unwrap();
        assert!(env.step(&[0.0, 0.0]).is_ok());
    }

    #[test]
    fn bad_actions_are_rejected() {
        let mut env = BranchReach::new();
        env.reset(Some(0)).unwrap();
        let err = env.step(&[0.0]).unwrap_err();
        assert_eq!(err.downcast_ref::<EnvError>(), Some(&EnvError::ActionDim { expected: 2, got: 1 }));
        assert!(env.step(&[f32::NAN, 0.0]).is_err());
    }

    #[test]
    fn actions_are_clipped_to_unit_box() {
        let mut a = BranchReach::new();
        let mut b = BranchReach::new();
        a.reset(Some(5)).unwrap();
        b.reset(Some(5)).unwrap();
        assert_eq!(a.step(&[7.0, -3.0]).unwrap(), b.step(&[1.0, -1.0]).unwrap());
    }

    #[test]
    fn obstacle_blocks_the_straight_up_route() {
        for seed in 0..50 {
            let (steps, path) = rollout(seed, |_| [0.0, 1.0]);
            assert!(steps.iter().all(|s| !s.info.success && !s.terminated), "seed {seed}");
            assert!(steps.last().unwrap().truncated);
            let end = path.last().unwrap();
            assert_eq!(end[1], OBSTACLE[2], "should rest against the obstacle's lower face");
        }
    }

    #[test]
    fn agent_never_enters_the_obstacle() {
        let mut rng = StdRng::seed_from_u64(1);
        for seed in 0..50 {
            let (_, path) = rollout(seed, |_| [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)]);
            assert!(path.iter().all(|&p| !BranchReach::in_obstacle(p) && p[0].abs() <= 1.0 && p[1].abs() <= 1.0));
        }
        // Diagonal moves that would cut the corner are stopped at a face.
        let (_, path) = rollout(0, |p| if p[1] < -0.3 { [-0.6, 0.2] } else { [1.0, 1.0] });
        assert!(path.iter().all(|&p| !BranchReach::in_obstacle(p)));
    }

    #[test]
    fn both_routes_succeed_without_noise() {
        for route in Route::ALL {
            for seed in 0..20 {
                let (steps, path) = rollout(seed, scripted(route));
                assert!(steps.last().unwrap().info.success, "{route:?} seed {seed}");
                assert!(steps.len() <= 40, "{route:?} took {} steps", steps.len());
                let passed = path.iter().filter(|p| p[1].abs() < 0.2).map(|p| p[0].signum()).collect::<Vec<_>>();
                assert!(
                    !passed.is_empty() && passed.iter().all(|&s| s == route.sign()),
                    "{route:?} went the other way"
                );
            }
        }
    }

    #[test]
    fn chunked_open_loop_policy_can_solve_it() {
        // The crudest chunked policy: one action per chunk of 5, repeated open-loop; gain 2
        // makes the held action cover the distance to the waypoint over the chunk.
        for route in Route::ALL {
            let mut demo = BranchReachDemo { gain: 2.0, ..BranchReachDemo::new(0.0).unwrap() };
            demo.begin_episode(route);
            let mut rng = StdRng::seed_from_u64(0);
            let mut ctl = |obs: &[f32]| demo.act(obs, &mut rng);
            let (mut t, mut held) = (0, [0.0; 2]);
            let (steps, _) = rollout(9, |obs| {
                if t % 5 == 0 {
                    held = ctl(obs);
                }
                t += 1;
                held
            });
            assert!(steps.last().unwrap().info.success, "{route:?}");
        }
    }

    #[test]
    fn demo_rejects_negative_noise() {
        assert!(BranchReachDemo::new(-0.1).is_err());
        assert!(BranchReachDemo::new(f32::NAN).is_err());
    }

    #[test]
    fn snapshot_then_restore_continues_the_same_episode() {
        let mut a = BranchReach::new();
        a.reset(Some(3)).unwrap();
        a.step(&[0.5, 1.0]).unwrap();
        let snap = a.snapshot().unwrap();
        let mut b = BranchReach::new();
        b.restore(&snap).unwrap();
        for _ in 0..5 {
            assert_eq!(a.step(&[-1.0, 0.3]).unwrap(), b.step(&[-1.0, 0.3]).unwrap());
        }
        assert!(b.restore(&snap[..3]).is_err());
    }
}
