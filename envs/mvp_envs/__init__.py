"""Python side of mvp: environment worker processes driven by the Rust trainer.

- `mvp_envs.worker`: the worker server (`python -m mvp_envs.worker`), protocol in envs/README.md.
- `mvp_envs.protocol`: message tags, version and the binary layouts shared with
  crates/envs/src/worker/.
- `mvp_envs.make`: builds an environment from an id (OGBench singletask names, robomimic
  tasks, any Gymnasium id).
- `mvp_envs.robomimic`: robomimic lift/can/square built with robosuite from `env_args`
  (ids `robomimic/<task>`).
- `mvp_envs.robomimic_demos`: scripted demonstrators for those tasks.
- `mvp_envs.data_robomimic`: dataset generation in robomimic's HDF5 layout
  (`python -m mvp_envs.data_robomimic`).
- `mvp_envs.testing`: tiny environments that fail on purpose (exceptions, hangs, crashes) for
  the bridge's tests.
"""
