"""Diffusion Policy (conditional 1-D U-Net, DDIM sampling) on the built-in obstacle task.

The demonstrations are bimodal (the expert passes the obstacle on the left or the right
at random); a diffusion policy should commit to one side per episode.

  python -m action_gen.main --config=configs/diffusion_unet_obstacle.py:demo \
      --workdir=/tmp/dp_obstacle --mode=train_and_eval

Variants (the arg after ':'; comma-separated key=value pairs are allowed too):
  (none)    DP's published low-dim sizes: U-Net (256, 512, 1024), batch 256, 3k steps.
  demo      CPU scale used by `make demo`: expect success >= 90%, collisions <= 2%,
            each side 35-65% (see README).
  runlocal  tiny model, a handful of steps: a smoke test in seconds.
"""

from configs import common


def get_config(arg=None):
    return common.obstacle_config(objective="diffusion", arg=arg)
