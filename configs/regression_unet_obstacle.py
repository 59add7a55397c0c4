"""MSE regression baseline on the same U-Net backbone, built-in obstacle task.

Regression averages the two demonstrated modes (left / right of the obstacle) and so
drives into it: expect collisions >= 50% (see README).

  python -m action_gen.main --config=configs/regression_unet_obstacle.py:demo \
      --workdir=/tmp/reg_obstacle --mode=train_and_eval

Variants: (none) full size, `demo` CPU scale, `runlocal` smoke test.
"""

from configs import common


def get_config(arg=None):
    return common.obstacle_config(objective="regression", arg=arg)
