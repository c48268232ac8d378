"""How often an OGBench dataset shows its singletask solved, by OGBench's own loader and
relabelling (reward and mask of the state s_t of each transition).

    .venv/bin/python experiments/diagnostics/dataset_successes.py ENV_ID=FILE.npz [...]

e.g. cube-double-play-singletask-task1-v0=data/cube-double-play-v0-100ep.npz. Prints per dataset
the transitions at success, the episodes that reach it and the histogram of relabelled rewards.
"""

import sys

import numpy as np
import ogbench


def main(pairs):
    for pair in pairs:
        env_id, path = pair.split("=", 1)
        _, train, _ = ogbench.make_env_and_datasets(env_id, dataset_path=path, add_info=True)
        rewards, masks, ends = (np.asarray(train[k]) for k in ("rewards", "masks", "terminals"))
        success = masks == 0
        last = np.flatnonzero(ends > 0)
        first = np.r_[0, last[:-1] + 1]
        reached = sum(bool(success[a : b + 1].any()) for a, b in zip(first, last))
        values, counts = np.unique(rewards, return_counts=True)
        print(
            f"{env_id}: {len(rewards)} transitions, {success.sum()} at success ({success.mean():.4f}), "
            f"{reached}/{len(last)} episodes reach it; rewards {dict(zip(values.tolist(), counts.tolist()))}"
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
