//! The agent's state in a checkpoint: every tensor, named, and the optimisers' step counts.

use std::collections::HashMap;

use anyhow::Result;
use mvp_nn::checkpoint;
use tch::{Device, Tensor};

use super::Agent;
use crate::config::AgentConfig;

impl Agent {
    /// Every tensor of the agent's state, named, for a checkpoint, and the optimiser steps.
    pub fn state(&self) -> (Vec<(String, Tensor)>, [u64; 2]) {
        let mut t = checkpoint::varstore_tensors(&self.actor_vs, "actor/");
        if let Some((vs, _, _)) = &self.ema {
            t.extend(checkpoint::varstore_tensors(vs, "actor_ema/"));
        }
        t.extend(checkpoint::varstore_tensors(&self.critic.vs, "critic/"));
        t.extend(checkpoint::varstore_tensors(&self.critic.target_vs, "critic_target/"));
        let (a, a_steps) = self.actor_opt.state("actor_opt/");
        let (c, c_steps) = self.critic_opt.state("critic_opt/");
        t.extend(a);
        t.extend(c);
        (t, [a_steps, c_steps])
    }

    /// An agent for the networks of checkpoint `dir` (one written by the trainer), built with
    /// `config` for observations of `obs_dim` and actions of `action_dim`; returns it with the
    /// checkpoint's metadata. Only the networks are read: no dataset, buffer or environment.
    pub fn load<M: serde::de::DeserializeOwned>(
        dir: &std::path::Path,
        obs_dim: usize,
        action_dim: usize,
        config: &AgentConfig,
        device: Device,
    ) -> Result<(Self, M)> {
        let loaded: checkpoint::Loaded<M> = checkpoint::load(dir)?;
        let mut agent = Self::new(obs_dim, action_dim, config, device)?;
        agent.load_state(&loaded.tensors, [0, 0])?;
        Ok((agent, loaded.meta))
    }

    /// Restores what [`Agent::state`] wrote.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: [u64; 2]) -> Result<()> {
        checkpoint::load_varstore(&self.actor_vs, tensors, "actor/")?;
        if let Some((vs, _, _)) = &mut self.ema {
            // A checkpoint written without the average starts it from the trained weights.
            if tensors.keys().any(|k| k.starts_with("actor_ema/")) {
                checkpoint::load_varstore(vs, tensors, "actor_ema/")?;
            } else {
                vs.copy(&self.actor_vs)?;
            }
        }
        checkpoint::load_varstore(&self.critic.vs, tensors, "critic/")?;
        checkpoint::load_varstore(&self.critic.target_vs, tensors, "critic_target/")?;
        self.actor_opt.load_state(tensors, "actor_opt/", steps[0])?;
        self.critic_opt.load_state(tensors, "critic_opt/", steps[1])?;
        Ok(())
    }
}
