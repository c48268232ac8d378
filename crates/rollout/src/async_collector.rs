//! The [`AsyncCollector`]: a [`Collector`] stepping on its own thread.

use anyhow::{bail, Result};

use crate::{Collected, Collector, OwnedPolicy};

/// A [`Collector`] on its own thread, so that environment steps overlap the learner's updates
/// (`env.async_collect`). Its step k acts with the k-th policy the learner sent: the learner
/// sends two at the start ([`AsyncCollector::start`]) and one after each step it has consumed,
/// so step k + 2 is collected with the networks after the learner's step k while the learner
/// updates on step k + 1. The sequence of policies, and so of transitions, does not depend on
/// timing: an uninterrupted run repeats itself. A checkpoint cannot capture the thread's
/// running episodes; a resumed run starts new ones.
pub struct AsyncCollector {
    items: std::sync::mpsc::Receiver<Result<Collected>>,
    policies: Option<std::sync::mpsc::Sender<OwnedPolicy>>,
    handle: Option<std::thread::JoinHandle<Collector>>,
    num_envs: usize,
}

impl AsyncCollector {
    /// Moves `collector` to a thread that steps with `first`, then `second`, then each policy
    /// sent with [`AsyncCollector::send`].
    pub fn start(mut collector: Collector, first: OwnedPolicy, second: OwnedPolicy) -> Result<Self> {
        let (policy_tx, policy_rx) = std::sync::mpsc::channel::<OwnedPolicy>();
        let (item_tx, items) = std::sync::mpsc::sync_channel(2);
        let sent = policy_tx.send(first).and_then(|()| policy_tx.send(second));
        sent.map_err(|_| anyhow::anyhow!("the policy channel is closed"))?;
        let num_envs = collector.num_envs();
        let handle = std::thread::Builder::new().name("collector".into()).spawn(move || {
            // Ends when the learner stops sending policies or stops receiving.
            while let Ok(mut policy) = policy_rx.recv() {
                let item = collector.step(&mut *policy);
                let failed = item.is_err();
                if item_tx.send(item).is_err() || failed {
                    break;
                }
            }
            collector
        })?;
        Ok(Self { items, policies: Some(policy_tx), handle: Some(handle), num_envs })
    }

    /// Environments E.
    pub fn num_envs(&self) -> usize {
        self.num_envs
    }

    /// The next step's transitions (waits for them).
    pub fn receive(&mut self) -> Result<Collected> {
        match self.items.recv() {
            Ok(item) => item,
            Err(_) => bail!("the collector thread stopped"),
        }
    }

    /// The policy of the step after the next one not yet given a policy.
    pub fn send(&mut self, policy: OwnedPolicy) -> Result<()> {
        let tx = self.policies.as_ref().expect("policies are sent until the collector stops");
        if tx.send(policy).is_err() {
            bail!("the collector thread stopped");
        }
        Ok(())
    }

    /// Stops the thread (after the step it is on) and returns the collector.
    pub fn stop(mut self) -> Result<Collector> {
        self.policies = None;
        while self.items.try_recv().is_ok() {}
        let handle = self.handle.take().expect("joined once");
        // Unblock a thread waiting to hand over a finished step.
        let items = std::mem::replace(&mut self.items, std::sync::mpsc::sync_channel(1).1);
        drop(items);
        handle.join().map_err(|_| anyhow::anyhow!("the collector thread panicked"))
    }
}
