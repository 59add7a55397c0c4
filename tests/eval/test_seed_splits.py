"""The dev and test episode ranges (eval/seed_splits.py) are disjoint, from each other and
from the demos', and results name the split they were measured on."""

import numpy as np

from action_gen.envs import obstacle
from action_gen.eval import seed_splits

EPISODES_PER_SPLIT = 5_000
# data.demo_seed values our configs and launchers use. Episode seeds are 32-bit hashes, so
# any two sets of n and m episodes share about n·m / 2^32 seeds by chance (base 63's 2,000
# demos share one with the test split's 5,000): the check is for these bases, not all.
DEMO_BASES = range(10)
DEMO_EPISODES = 2_000  # per base: Meta-World's collect draws up to 4x its demo count


def test_splits_and_demos_are_disjoint():
    dev = set(obstacle.episode_seeds(seed_splits.DEV_SEED, EPISODES_PER_SPLIT).tolist())
    test = set(obstacle.episode_seeds(seed_splits.TEST_SEED, EPISODES_PER_SPLIT).tolist())
    assert len(dev) == len(test) == EPISODES_PER_SPLIT
    assert not dev & test
    demos = np.concatenate([obstacle.episode_seeds(b, DEMO_EPISODES) for b in DEMO_BASES])
    assert not set(demos.tolist()) & (dev | test)


def test_split_names():
    assert seed_splits.split_of(100_000) == "dev"
    assert seed_splits.split_of(200_000) == "test"
    assert seed_splits.split_of(100_001) == "custom"


def test_schema_default_is_dev():
    from action_gen import config_schema

    assert config_schema.base_config().eval.seed == seed_splits.DEV_SEED
