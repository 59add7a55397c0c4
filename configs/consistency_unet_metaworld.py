"""Few-step Meta-World policy by consistency distillation of a flow (or DDIM) U-Net
teacher, the whole chain in one command, as configs/consistency_unet_obstacle.py:

  python -m action_gen.main --config=configs/consistency_unet_metaworld.py:task=push,cpu \
      --workdir=W --mode=train_and_eval

trains the teacher in W/teacher exactly as configs/flow_unet_metaworld.py would with the
same arg (resumed, or reused when W already holds it; the expert's demos are collected
once, in W), then the student in W (initialized from the teacher, N = 2 intervals of 5
teacher steps, the teacher's whole remaining trajectory as target), then evaluates the
student at 1 step (results.json as every Meta-World eval). Two steps:
`--mode=eval --workdir=W --config.eval.num_sample_steps=2`.

Arg: everything configs/diffusion_unet_metaworld.py takes (task=NAME, image=CAM:SIZE, cpu,
runlocal, demos=, steps=, seed=, post_success=; `steps=` sets the teacher's), plus
  teacher=flow|diffusion   the teacher's objective (default flow: Euler-10).
  student_steps=N          the student's training steps (default: the teacher's, x 1.5).
Sampling is unclipped, as the teacher's (the env clips each action).
"""

from configs import common, consistency_unet_obstacle, diffusion_unet_metaworld


def get_config(arg=None):
    flags, values = common.parse_arg(arg)
    family = values.pop("teacher", "flow")
    if family not in ("flow", "diffusion"):
        raise ValueError(
            f"configs/consistency_unet_metaworld.py: teacher={family!r}; use flow or diffusion"
        )
    return consistency_unet_obstacle.distill(
        lambda teacher_arg: diffusion_unet_metaworld.metaworld_config(family, teacher_arg),
        flags,
        values,
        family,
        lambda teacher: teacher.train.num_steps * 3 // 2,
    )
