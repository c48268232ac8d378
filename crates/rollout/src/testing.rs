//! Helpers shared by the unit tests of several modules.

use anyhow::Result;

use crate::{make_pool, EnvPool};

pub(crate) fn native_pool(n: usize) -> Box<dyn EnvPool> {
    make_pool("branch-reach-v0", n, 1, 0, 1).unwrap()
}

/// A policy that always pushes towards +x, +y, counting its calls and rows.
pub(crate) fn constant(
    h: usize,
    a: usize,
    calls: &mut Vec<usize>,
) -> impl FnMut(&[f32], usize) -> Result<Vec<f32>> + '_ {
    move |_obs, k| {
        calls.push(k);
        Ok(vec![0.5; k * h * a])
    }
}
