"""One-step policy without a teacher: a shortcut model (flow matching with a step-size
input, trained to be self-consistent across step sizes) on the built-in obstacle task.

  python -m action_gen.main --config=configs/shortcut_unet_obstacle.py:demo \
      --workdir=/tmp/shortcut_obstacle --mode=train_and_eval      # evaluates 1 step
  python -m action_gen.main --mode=eval --workdir=/tmp/shortcut_obstacle \
      --config=configs/shortcut_unet_obstacle.py:demo --config.eval.num_sample_steps=4

Sampling takes S = 1, 2, 4, ... (powers of two up to 2**max_steps_log2) steps of size
1/S, one model call each. Variants as flow_unet_obstacle.py (none, demo, runlocal);
the U-Net gets a step-size input (`model.step_input`).
"""

import ml_collections

from configs import common


def get_config(arg=None):
    config = common.obstacle_config("flow", arg)
    num_sample_steps = ml_collections.FieldReference(1)
    clip_sample = ml_collections.FieldReference(True)
    objective = ml_collections.ConfigDict()
    objective.name = "shortcut"
    objective.time_scale = 100.0  # as flow: the model sees t in diffusion's k range
    objective.max_steps_log2 = 7  # step sizes 1, 1/2, ..., 1/128 (Frans et al.'s M = 128)
    objective.bootstrap_fraction = 0.25  # Frans et al.'s share of self-consistency rows
    objective.target = "ema"
    objective.step_scale = 10.0
    objective.clip_sample = clip_sample
    objective.num_sample_steps = num_sample_steps
    config.objective = objective
    config.model.step_input = True
    config.eval.num_sample_steps = num_sample_steps
    config.eval.clip_sample = clip_sample
    return config
