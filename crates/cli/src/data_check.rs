//! `mvp data check FILE --env ENV`: what a dataset holds, before a run trusts it.

use std::path::PathBuf;

use anyhow::Result;
use mvp_replay::{Audit, Dataset};

/// Loads `file` as a run with `env.name = env` would (OGBench files relabelled for its task)
/// and prints episodes, lengths, the action range, every flaw the load check would stop on,
/// and the successes per task where the environment family defines tasks.
pub fn run(file: PathBuf, env: String) -> Result<()> {
    let load = |env: &str| -> Result<Dataset> {
        let config = mvp_data::DataConfig { path: file.clone(), demo_episodes: 0, ..Default::default() };
        mvp_data::load(&config, env, 0)?.ok_or_else(|| anyhow::anyhow!("{} holds no dataset", file.display()))
    };
    let data = load(&env)?;
    let a = data.audit();
    println!("{} for {env}", file.display());
    let tail = if a.open_tail { " (the last one has no terminal row)" } else { "" };
    println!(
        "  transitions {}, episodes {}{tail}, lengths {} to {} (mean {:.1})",
        a.transitions,
        a.episodes,
        a.lengths.0,
        a.lengths.1,
        a.transitions as f64 / a.episodes.max(1) as f64
    );
    println!("  observations: {} values per row; actions: {} per row", data.obs_dim, data.act_dim);
    let range: Vec<String> = a.action_range.iter().map(|(lo, hi)| format!("[{lo:.3}, {hi:.3}]")).collect();
    println!("  action range per dimension: {}", range.join(" "));
    let ones = vec![1.0; data.act_dim];
    let minus: Vec<f32> = ones.iter().map(|v| -v).collect();
    match Audit::actions_outside(&data, &minus, &ones) {
        None => println!("  actions outside [-1, 1]: none"),
        Some(f) => println!(
            "  actions outside [-1, 1]: {} values, the first in episode {}, row {} (a run clips them unless \
             data.out_of_range_actions = \"refuse\")",
            f.count, f.first.episode, f.first.row
        ),
    }
    if a.flaws.is_empty() {
        println!("  non-finite values and bad flags: none");
    }
    for f in &a.flaws {
        println!(
            "  `{}`: {} {} value(s), the first in episode {}, row {}, column {} (a run refuses this file)",
            f.key, f.count, f.what, f.first.episode, f.first.row, f.first.column
        );
    }
    let terminal_masks = data.masks.iter().filter(|&&m| m == 0.0).count();
    println!("  true terminal states (bootstrap mask 0): {terminal_masks}");
    match task_family(&env) {
        Some((prefix, suffix)) => {
            println!("  episodes reaching each task's goal (reward 0 in some row):");
            for k in 1..=5 {
                let id = format!("{prefix}{k}{suffix}");
                match load(&id) {
                    Ok(d) => println!("    task{k}: {} of {}", d.audit().successes, a.episodes),
                    Err(e) => println!("    task{k}: not read ({e:#})"),
                }
            }
        }
        None => println!("  episodes reaching the goal (reward 0 in some row): {} of {}", a.successes, a.episodes),
    }
    Ok(())
}

/// An OGBench singletask id split around its task number (`…-singletask-task2-v0` →
/// (`…-singletask-task`, `-v0`)).
fn task_family(env: &str) -> Option<(&str, &str)> {
    let at = env.find("-singletask-task")? + "-singletask-task".len();
    let (prefix, rest) = env.split_at(at);
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    (digits > 0).then(|| (prefix, &rest[digits..]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_families_are_split_around_the_number() {
        assert_eq!(
            super::task_family("ogbench/cube-double-play-singletask-task2-v0"),
            Some(("ogbench/cube-double-play-singletask-task", "-v0"))
        );
        assert_eq!(super::task_family("robomimic/lift"), None);
    }
}
