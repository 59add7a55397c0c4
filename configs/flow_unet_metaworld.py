"""Flow matching (conditional 1-D U-Net, 10 Euler steps) on any Meta-World task.

Same data, model and evaluation as configs/diffusion_unet_metaworld.py (see its docstring
for the arg: task=NAME, image=CAM:SIZE, cpu, runlocal); only the objective differs:

  python -m action_gen.main --config=configs/flow_unet_metaworld.py:task=push,cpu \
      --workdir=/tmp/flow_mw_push --mode=train_and_eval
"""

from configs import diffusion_unet_metaworld


def get_config(arg=None):
    return diffusion_unet_metaworld.metaworld_config("flow", arg)
