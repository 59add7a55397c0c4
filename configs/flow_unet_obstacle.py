"""Flow matching (conditional 1-D U-Net, 10 Euler steps) on the built-in obstacle task.

π0's objective on Diffusion Policy's backbone: a linear path from noise (t = 0) to the
action chunk (t = 1), training times from π0's Beta(1.5, 1) (noisy end emphasised), and
10 Euler steps at inference. The demonstrations are bimodal (the expert passes the
obstacle on the left or the right at random); the policy should commit to one side per
episode.

  python -m action_gen.main --config=configs/flow_unet_obstacle.py:demo \
      --workdir=/tmp/flow_obstacle --mode=train_and_eval

Variants (the arg after ':'; comma-separated key=value pairs are allowed too):
  (none)    DP's published low-dim sizes: U-Net (256, 512, 1024), batch 256.
  demo      CPU scale used by `make demo`: target success >= 90%, collisions <= 2%,
            each side 35-65% (as diffusion).
  runlocal  tiny model, a handful of steps: a smoke test in seconds.
"""

from configs import common


def get_config(arg=None):
    return common.obstacle_config(objective="flow", arg=arg)
