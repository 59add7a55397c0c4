"""Command line: train, evaluate, or both, from an ml_collections config file.

  python -m action_gen.main --config=configs/diffusion_unet_obstacle.py:runlocal \
      --workdir=/tmp/run --mode=train_and_eval --config.train.num_steps=100
"""

import logging
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.")
_MODE = flags.DEFINE_enum(
    "mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run."
)
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str) -> dict | None:
    """Runs `mode` for `config` in `workdir`; returns the eval summary when evaluating."""
    # Imported here so `--help` and config errors answer without loading JAX/TF.
    from action_gen.eval import evaluate
    from action_gen.train import loop

    workdir = os.path.abspath(workdir)
    if mode in ("train", "train_and_eval"):
        loop.train(config, workdir)
    if mode in ("eval", "train_and_eval"):
        return evaluate.evaluate_checkpoint(workdir, config.eval)
    return None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    run(_CONFIG.value, _WORKDIR.value, _MODE.value)


if __name__ == "__main__":
    app.run(main)
