"""Few-step language-conditioned π0 by consistency distillation of a π0 flow teacher, on
the language-conditioned obstacle task, the whole chain in one command:

  python -m action_gen.main --config=configs/consistency_pi0_obstacle.py:runlocal \
      --workdir=W --mode=train_and_eval

trains the teacher in W/teacher exactly as configs/flow_pi0_obstacle.py would with the same
arg (resumed, or reused when W already holds it), then the student in W (initialized from
the teacher's EMA weights; N = 2 intervals of 5 teacher Euler steps, the teacher's whole
remaining trajectory as target, configs/consistency_unet_obstacle.distillation_config),
then evaluates the student at 1 step: results.json has `instruction_following_rate` beside
success and collisions. Two steps: `--mode=eval --workdir=W
--config.eval.num_sample_steps=2`.

Arg: everything configs/flow_pi0_obstacle.py takes (runlocal, smoke, pi0, seed=...), plus
  student_steps=N   the student's training steps (default: half the teacher's).
The student's learning rate is a third of the teacher's (it starts at the teacher's
weights), as configs/consistency_unet_obstacle.py:runlocal.
"""

from configs import common, consistency_unet_obstacle, flow_pi0_obstacle


def get_config(arg=None):
    flags, values = common.parse_arg(arg)
    config = consistency_unet_obstacle.distill(
        flow_pi0_obstacle.get_config,
        flags,
        values,
        "flow",
        lambda teacher: max(1, teacher.train.num_steps // 2),
    )
    config.optimizer.lr = config.teacher.optimizer.lr / 3
    return config
