"""Regression baseline (same U-Net, one deterministic forward pass, MSE to the chunk) on any
Meta-World task, from expert demos; the row beside diffusion and flow in README:

  python -m action_gen.main --config=configs/regression_unet_metaworld.py:task=push,cpu \
      --workdir=/tmp/reg_mw_push --mode=train_and_eval

The arg is the same as `configs/diffusion_unet_metaworld.py`'s (task=, image=, cpu,
runlocal, demos=, steps=, seed=).
"""

from configs import diffusion_unet_metaworld


def get_config(arg=None):
    return diffusion_unet_metaworld.metaworld_config("regression", arg)
