"""Named ranges of evaluation episodes: settings are chosen on `dev`, results reported on `test`.

An evaluation's episodes are `obstacle.episode_seeds(eval.seed, E)` (a prefix-stable hash of
the base seed, used by every env), so a base seed names a set of episodes. Two bases are
reserved:

  dev  = 100_000   every setting chosen by a closed-loop measurement (a candidate count M,
                   the perturbation δ, a distillation recipe, a sweep's pick) is chosen here;
                   it is also the schema's default `eval.seed`, so plain evaluations and
                   `make demo` run on it;
  test = 200_000   the figures reported for such a chosen setting: `--config.eval.seed=200000`.

results.json records `eval_seed` and `eval_seed_split` ("dev", "test" or "custom"). The
episodes of the two splits, and the demos of `data.demo_seed` 0-9, are disjoint:
tests/eval/test_seed_splits.py checks it for 5,000 episodes per split and 2,000 demos per
base. (Episode seeds are 32-bit hashes: two sets of n and m episodes share about
n·m / 2^32 by chance, so this is checked for the bases we use, not promised for all.)
"""

DEV_SEED = 100_000
TEST_SEED = 200_000
SPLIT_SEEDS = {"dev": DEV_SEED, "test": TEST_SEED}


def split_of(seed: int) -> str:
    """ "dev", "test" or "custom": the named split whose base seed is `seed`."""
    for name, base in SPLIT_SEEDS.items():
        if int(seed) == base:
            return name
    return "custom"
