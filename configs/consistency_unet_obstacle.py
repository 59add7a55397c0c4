"""One-step policy by consistency distillation of a flow (or diffusion) U-Net teacher on
the built-in obstacle task; the whole chain in one command:

  python -m action_gen.main --config=configs/consistency_unet_obstacle.py:runlocal \
      --workdir=W --mode=train_and_eval

trains the teacher in W/teacher (resumed, or reused when W already holds it), then the
student in W (initialized from the teacher's EMA weights, in the teacher's normalized
units and horizons), then evaluates the student at 1 step (one batched model call that
keeps the most stable of 4 candidate chunks, `candidates=`): W/results.json
(`num_sample_steps`, `success_rate`, `collision_rate`, `mode_left_fraction`, ...).
Other step counts: `--mode=eval --workdir=W --config.eval.num_sample_steps=2` (any S
that divides into the grid, S <= objective.num_teacher_steps).

Variants (the arg after ':'; comma-separated, key=value pairs too):
  runlocal       the CPU chain (2 cores: 36 min measured): `make demo`'s U-Net (64, 128, 256),
                 200 demos, 100 evaluation episodes; teacher: flow, 2,000 steps (10
                 Euler steps: 100% in README); student: see STUDENT_STEPS.
  tiny           a smoke test of the chain in seconds (common's `runlocal` sizes).
  (none)         DP's low-dim sizes, for an accelerator.
  teacher=diffusion   distill the DDIM teacher instead of the flow one.
  teacher=none   consistency *training* (no teacher: the ODE step estimated from the data
                 point itself, `teacher_solver="data"`), flow parameterization, from random
                 initialization; the teacher-free baseline beside
                 configs/shortcut_unet_obstacle.py.
  hypotheses=K   a multiple-choice head of K hypotheses and scores on the student
                 (objectives/consistency.py), trained winner-takes-all and sampled by
                 argmax, each hypothesis starting as a copy of the teacher's output
                 layer. Experimental: on this chain it splits the first chunk's
                 modes (1.8% blends) but closed loop does worse than one head (80% /
                 20% collisions at 2,507 steps; BUILD_NOTES, issue 16).
  candidates=M   sample the most stable of M one-step chunks (default CANDIDATES = 4; 1:
                 plain sampling); a sampling setting, also `--config.eval.num_candidates=M`
                 in --mode=eval of a trained student.
  student_steps=N  the student's training steps (default STUDENT_STEPS; `runlocal`'s 3,000
                 keep the chain within 45 minutes). 6,000 measured: 98% / 2% collisions at
                 1 step on an H200 run, 94% / 6% here on 2 CPU cores (BUILD_NOTES, #16).
"""

import ml_collections

from configs import common

TEACHERS = ("flow", "diffusion", "none")
# Settings of the teacher's objective that define what its network predicts; the
# student's consistency objective takes them over (train/teacher.py checks they agree).
FAMILY_FIELDS = {
    "flow": ("time_scale",),
    "diffusion": ("num_train_steps", "schedule", "prediction_type"),
}
# Best-of-M sampling by stability (objectives/from_noise.py `select_stable_candidate`):
# the 1-step student of `runlocal` blends the modes in 8% of its first chunks alone and
# 0.15% as the most stable of 4 (500 episodes: 94% / 6% collisions -> 100% / 0%; M = 2:
# 99% / 1%; BUILD_NOTES, issue 16).
CANDIDATES = 4
# Student training steps per variant (the teacher keeps its own config's).
STUDENT_STEPS = {"runlocal": 3_000, "tiny": 4, "": 20_000}


def distillation_config(
    teacher: ml_collections.ConfigDict,
    student: ml_collections.ConfigDict,
    family: str,
    *,
    teacher_free: bool = False,
    clip_sample: bool = True,
    num_steps: int,
    num_hypotheses: int = 1,
    num_candidates: int = 1,
) -> ml_collections.ConfigDict:
    """`student` (a copy of the teacher's run config: same data, model and horizons) with
    the consistency objective distilling `teacher` (`family`: its objective, "flow" or
    "diffusion"), or, with `teacher_free`, consistency training from data alone;
    `num_hypotheses` K > 1 gives the student a multiple-choice head (the same K in
    `model.num_hypotheses` and `objective.num_hypotheses`; objectives/consistency.py);
    `num_candidates` M > 1 samples the most stable of M chunks (a sampling setting,
    objectives/from_noise.py `select_stable_candidate`).
    Shared by the obstacle and Meta-World distillation configs."""
    num_sample_steps = ml_collections.FieldReference(1)
    clip = ml_collections.FieldReference(bool(clip_sample))
    objective = ml_collections.ConfigDict()
    objective.name = "consistency"
    objective.teacher_workdir = "teacher"  # relative to the student's workdir
    objective.parameterization = family
    for key in FAMILY_FIELDS[family]:
        objective[key] = teacher.objective[key]
    # The student's grid: N = 2 intervals of k = 5 teacher solver steps (the teacher's own
    # 10-step sampler: flow Euler, diffusion DDIM), so 1- and 2-step sampling are on the
    # grid (S <= N). The target is the teacher's whole remaining trajectory (no bootstrap
    # from the student): measured on the obstacle task (BUILD_NOTES, issue 16) 94% / 100%
    # success at 1 / 2 steps, against 88% / 99% with the bootstrapped (online) target on
    # the same grid and 64% / 97% with N = 20, k = 1 and the EMA target.
    objective.num_teacher_steps = 2
    objective.teacher_substeps = 5  # teacher solver steps per grid interval
    objective.teacher_solver = "euler" if family == "flow" else "ddim"
    if family == "diffusion":  # the DDIM teacher clips x̂_0 as its own sampler does
        objective.teacher_clip = bool(clip_sample)
    objective.target = "teacher"
    # No EDM skip term: f = the teacher's own data estimate (its one-step jump), so the
    # student starts at the teacher; σ_d = 0.5 made distillation worse (objectives/
    # consistency.py docstring).
    objective.sigma_data = 0.0
    objective.clip_sample = clip
    objective.num_sample_steps = num_sample_steps
    # Best-of-M by stability (sampling only): M chunks from independent noises in one
    # batched call, the one least moved by a δ-perturbation of its noise kept; it avoids
    # the blends a one-step map makes between modes (BUILD_NOTES, issue 16).
    candidates = ml_collections.FieldReference(int(num_candidates))
    objective.num_candidates = candidates
    perturbation = ml_collections.FieldReference(0.1)
    objective.candidate_perturbation = perturbation
    if teacher_free:
        objective.teacher_workdir = ""
        objective.teacher_solver = "data"
        objective.target = "online"  # iCT: no EMA target
        objective.num_teacher_steps = 20  # a bootstrapped chain of 1-interval estimates
        objective.teacher_substeps = 1
    if int(num_hypotheses) > 1:
        hypotheses = ml_collections.FieldReference(int(num_hypotheses))
        objective.num_hypotheses = hypotheses
        student.model.num_hypotheses = hypotheses
    student.objective = objective
    if not teacher_free:
        student.teacher = teacher
    student.train.init_from_teacher = not teacher_free
    student.train.num_steps = int(num_steps)
    student.eval.num_sample_steps = num_sample_steps
    student.eval.clip_sample = clip
    # Linked sampling settings: --mode=eval overrides the checkpoint's values with these.
    student.eval.num_candidates = candidates
    student.eval.candidate_perturbation = perturbation
    return student


def distill(build_teacher, flags, values, family: str, default_num_steps):
    """The student config distilling the run `build_teacher(teacher_arg)` builds, where
    `teacher_arg` is the config arg (`flags`, `values` from common.parse_arg) without
    `student_steps=N` (the student's training steps; default `default_num_steps(teacher)`).
    The student is the same run (data, model, horizons) with the consistency objective of
    `distillation_config`, sampling clipped as the teacher's. Shared by the π0 and
    Meta-World distillation configs, whose teachers are exactly their own configs' runs."""
    values = dict(values)
    student_steps = values.pop("student_steps", None)
    teacher_arg = ",".join(sorted(flags) + [f"{k}={v}" for k, v in values.items()]) or None
    teacher = build_teacher(teacher_arg)
    student = build_teacher(teacher_arg)
    num_steps = int(student_steps) if student_steps else int(default_num_steps(teacher))
    return distillation_config(
        teacher,
        student,
        family,
        clip_sample=bool(teacher.objective.clip_sample),
        num_steps=num_steps,
    )


def get_config(arg=None):
    flags, values = common.parse_arg(arg)
    if "smoke" in flags:  # every config's name for its few-second check: here tiny
        flags = (flags - {"smoke"}) | {"tiny"}
    unknown = flags - {"runlocal", "tiny"}
    if unknown:
        raise ValueError(
            f"configs/consistency_unet_obstacle.py: unknown variant(s) {sorted(unknown)}; "
            "use runlocal or tiny"
        )
    family = values.get("teacher", "flow")
    if family not in TEACHERS:
        raise ValueError(
            f"configs/consistency_unet_obstacle.py: teacher={family!r}; use one of {TEACHERS}"
        )
    variant = "runlocal" if "runlocal" in flags else ("tiny" if "tiny" in flags else "")
    base_arg = {"runlocal": "demo", "tiny": "runlocal", "": ""}[variant]
    unknown_values = set(values) - {
        "teacher",
        "seed",
        "student_steps",
        "hypotheses",
        "candidates",
    }
    if unknown_values:
        raise ValueError(
            f"configs/consistency_unet_obstacle.py: unknown setting(s) {sorted(unknown_values)}; "
            "use teacher=, seed=, student_steps=, hypotheses=, candidates="
        )
    if "seed" in values:
        base_arg = ",".join(t for t in (base_arg, f"seed={values['seed']}") if t)

    teacher_free = family == "none"
    if teacher_free:
        family = "flow"  # the student's time convention and data estimate
    teacher = common.obstacle_config(family, base_arg)
    config = common.obstacle_config(family, base_arg)  # same data, model and horizons
    config = distillation_config(
        teacher,
        config,
        family,
        teacher_free=teacher_free,
        clip_sample=True,
        num_steps=int(values.get("student_steps", STUDENT_STEPS[variant])),
        num_hypotheses=int(values.get("hypotheses", 1)),
        num_candidates=int(values.get("candidates", CANDIDATES)),
    )
    if variant == "runlocal":
        config.optimizer.lr = 3e-4
        config.optimizer.warmup_steps = 100
        config.train.checkpoint_every = 500
    return config
