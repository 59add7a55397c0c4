"""Consistency distillation of a trained diffusion or flow teacher (few-step sampling).

A consistency function f_θ(x, τ) maps any point of the teacher's probability-flow ODE
trajectory back to the trajectory's data end, so one model call turns noise into a chunk
(Song et al. 2023; Consistency Policy, Prasad et al. 2024). The student is the teacher's
network (same model, same time input, usually initialized from the teacher's weights:
`train.init_from_teacher`), trained on the teacher's discretized ODE.

Grid. Positions i = 0 .. N (N = `num_teacher_steps`), i = 0 pure noise, i = N the data,
with x_i = a_i x + b_i ε (x the normalized chunk, ε ~ N(0, I)), the model's time input
m_i, the data estimate D(x, out, i) and the solver step Φ(x, i → i+1): the teacher's
family (`parameterization`) states them, in its own convention and settings
(`flow.probability_flow`: t_i = i / N, a_i = t_i, m_i = t_i · time_scale, or the mirrored
time of `time_convention="noise_at_1"`, openpi's; `diffusion.probability_flow`: the DDIM
chain k_i, a_i = √ᾱ_{k_i}, m_i = k_i). objectives/ode.py describes the interface.

Skip-scaling (EDM / Consistency Models' parameterization, with σ_i = b_i / a_i and the
boundary σ_N = 0):
  f_θ(x, i) = c_skip(σ_i) x / a_i + (1 - c_skip(σ_i)) D(x, F_θ(x, m_i), i),
  c_skip(σ) = σ_d² / (σ² + σ_d²) = σ_d² a² / (b² + σ_d² a²)     (no division by a = 0),
so f_θ(x, N) = x exactly (the boundary condition), and at the noisy end f_θ ≈ D.
σ_d = 0 drops the skip term: f_θ = D, the teacher's own skip-scaling (flow: c_skip = 1,
c_out = 1 - t; diffusion ε-prediction: c_skip = 1/√ᾱ, c_out = -√(1-ᾱ)/√ᾱ), whose data end
is the identity too. A student initialized from its teacher then starts at the teacher's
one-step estimate, which on the obstacle task is already close to the ODE's endpoint
(mean squared error 0.004 at the noise end, less further in); with σ_d = 0.5 the EDM mix
adds c_skip (x/a − x) to it (0.02-0.06 in the middle of the grid) and distillation
propagated that error back to the noise end (BUILD_NOTES, issue 16). The configs use 0.

Distillation loss (teacher ODE step, EMA target):
  n ~ U{0 .. N-1},  x_n = a_n x + b_n ε,  x̂_{n+1} = Φ_teacher(x_n, n → n+1)  (k =
  `teacher_substeps` steps of the teacher's solver on the grid of N k points: flow Euler
  or Heun, diffusion DDIM η = 0; the student lives on every k-th point),
  L(θ) = E || f_θ(x_n, n) - sg f_θ⁻(x̂_{n+1}, n+1) ||²   (masked mean over real actions),
θ⁻ the train state's EMA of θ (`target="ema"`, what the train step passes as
`ema_params`) or θ itself (`target="online"`, iCT's choice). At n = N-1 the target is the
teacher's step itself, which anchors the chain to the teacher.
`target="teacher"` drops the bootstrap: the target is the teacher's ODE solved from x_n
to the data end ((N - n) k solver steps), i.e. trajectory distillation at every grid
position (Luhman & Luhman 2021 at n = 0); it costs N k teacher calls per batch and is
what the obstacle task's 1-step policy needed (BUILD_NOTES, issue 16).

Consistency training (teacher-free, `teacher_solver="data"`): the teacher's step is
replaced by the one-sample estimate x̂_{n+1} = a_{n+1} x + b_{n+1} ε (same x, same ε; the
ODE step of the conditional flow through x, unbiased for the marginal one as N → ∞; Song
et al. 2023, Sec. 5, Thm. 2). The student then learns from data alone, from random
initialization (no `teacher_workdir`).

Sampling with S steps (multistep consistency sampling, Song et al. Alg. 1), one
`lax.scan`: positions p_j = round(j N / S), j = 0 .. S-1 (p_0 = 0, pure noise),
  x̂ = f_θ(x, p_j);  x ← a_{p_{j+1}} x̂ + b_{p_{j+1}} z_j  (z_j ~ N(0, I); after the last
  step x ← x̂), clipped to [-1, 1] at every step when `clip_sample`.
S = 1 is one model call. S must divide into the grid (S ≤ N).

Multiple-choice heads (`num_hypotheses` K > 1; the model's `num_hypotheses` too, e.g.
models/unet1d.py): a one-step map from noise to a bimodal chunk distribution must jump
where the noise changes mode, and a smooth network fitted by L2 leaves a band of noises
around that boundary whose chunks blend the modes (on the obstacle task, 7-8% of one-step
first chunks: BUILD_NOTES, issue 16). With K hypotheses f_θ^k(x, i) and logits s_θ^k(x, i)
(multiple-choice learning: Guzman-Rivera et al. 2012; Rupprecht et al. 2017):
  e_k = || f_θ^k(x_n, n) - target ||²   (masked, per example),   k* = argmin_k e_k,
  L(θ) = E[ Σ_k r_k e_k ] + λ CE(s_θ(x_n, n), k*),
  r_k = 1 - ε for k = k*, ε / (K - 1) otherwise     (relaxed winner-takes-all; ε =
        `hypothesis_relax`, λ = `score_weight`),
and f_θ(x, i) = f_θ^{argmax_k s_θ^k(x, i)}(x, i) wherever one output is needed (sampling,
the EMA / online target). Each hypothesis is free to stay smooth over its own part of
noise space; the argmax makes the jump, so a mistake at the boundary gives the other
mode's clean chunk instead of a blend. The default ε = 0 is plain winner-takes-all, and
`train.init_from_teacher` starts every hypothesis as a noisy copy of the teacher's output
layer (`unet1d.hypotheses_from_output_layer`). Both choices come from measurements
(BUILD_NOTES, issue 16): in a probe on the teacher's chunks where most examples are
unimodal (the product's case), ε > 0 pulled the losers towards the mean and kept them
blending, while noisy copies with ε = 0 parted at the modes' boundary (blends 3.2% →
0-0.2%); on the obstacle chain a fresh head with ε = 0.05 did not split (blends rose) and
one with ε = 0 collapsed onto one hypothesis (the others never won again). With the copy
init the chain's first chunks split cleanly (blends 7.95% → 1.8%, modes 45 / 54%), but
closed loop the 1-step policy is worse than one head (80% success / 20% collisions against
94% / 6%): later in an episode the score can pick the other side's hypothesis and turn a
committed trajectory back across the obstacle. So the head stays opt-in
(`hypotheses=K` in configs/consistency_unet_obstacle.py).

The teacher enters as `teacher_apply_fn` (its model's apply function) and
`teacher_params` (an explicit argument of the compiled train step, so its weights are
not baked into the program as constants); `objectives.create_objective(..., teacher=)`
binds them. The student's objective config names the teacher's parameterization and its
settings (time_scale; num_train_steps, schedule, prediction_type, ...), which must equal
the teacher's (train/teacher.py checks).

References:
  Song, Dhariwal, Chen & Sutskever, "Consistency Models" (2023), Alg. 1-2, Eq. 7 and
  App. C (c_skip, c_out); Karras et al., "Elucidating the Design Space of Diffusion-Based
  Generative Models" (EDM, 2022); Prasad et al., "Consistency Policy: Accelerated
  Visuomotor Policies via Consistency Distillation" (2024); Song & Dhariwal, "Improved
  Techniques for Training Consistency Models" (iCT, 2023) for the stop-gradient target.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from action_gen import models
from action_gen.data import schema
from action_gen.objectives import diffusion, flow, from_noise, ode
from action_gen.objectives.regression import action_weights, batch_masked_mse

PARAMETERIZATIONS = ("flow", "diffusion")
# "data": consistency *training* (no teacher): x̂_{n+1} = a_{n+1} x + b_{n+1} ε with the
# same ε, the one-sample estimate of the ODE step (Song et al. 2023, Sec. 5).
DATA_ESTIMATE = "data"
TEACHER_SOLVERS = {
    "flow": (*flow.TEACHER_SOLVERS, DATA_ESTIMATE),
    "diffusion": (*diffusion.TEACHER_SOLVERS, DATA_ESTIMATE),
}
TARGETS = ("ema", "online", "teacher")


# The teacher families: each states its probability-flow ODE (objectives/ode.py).
_FAMILIES = {"flow": flow, "diffusion": diffusion}


def teacher_settings(parameterization: str, settings: dict) -> dict:
    """The settings of `parameterization`'s ODE (the family's FAMILY_SETTINGS) among
    `settings`."""
    return {k: settings[k] for k in _FAMILIES[parameterization].FAMILY_SETTINGS if k in settings}


def c_skip(signal: jax.Array, noise: jax.Array, sigma_data: float) -> jax.Array:
    """c_skip(σ) / a = σ_d² a / (b² + σ_d² a²) with σ = b / a: the weight on x itself (so
    that f = c x + (1 - c_skip) D), finite at a = 0; c_skip itself is this times a.
    σ_d = 0: no skip term (f = D, the teacher's own data estimate)."""
    if sigma_data == 0:
        return jnp.zeros_like(signal * noise)
    s2 = sigma_data**2
    return s2 * signal / (noise**2 + s2 * signal**2)


class _Family(NamedTuple):
    """What the consistency function needs of the teacher: its ODE on the fine grid of
    N k + 1 points (the student's positions are i k), and k."""

    flow: ode.ProbabilityFlow
    substeps: int

    @property
    def grid(self) -> ode.Grid:
        return self.flow.grid

    def denoise(self, x, out, index):
        return self.flow.denoise(x, out, index)


def _family(
    parameterization: str,
    num_teacher_steps: int,
    teacher_substeps: int,
    settings: dict,
    solver: str | None = None,
    teacher_clip: bool = True,
) -> _Family:
    """The teacher's ODE (its family's `probability_flow` with `settings`, the family's
    ODE settings) on N k points, and k."""
    if int(teacher_substeps) < 1:
        raise ValueError(f"teacher_substeps={teacher_substeps} must be >= 1")
    module = _FAMILIES[parameterization]
    options = {"solver": solver} if solver not in (None, DATA_ESTIMATE) else {}
    if parameterization == "diffusion":
        options["clip"] = teacher_clip
    points = int(num_teacher_steps) * int(teacher_substeps)
    return _Family(
        module.probability_flow(points, **teacher_settings(parameterization, settings), **options),
        int(teacher_substeps),
    )


def consistency_hypotheses(
    step_fn: Callable,
    params,
    context,
    x: jax.Array,
    index: jax.Array,
    family,
    sigma_data,
    num_hypotheses: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Every hypothesis f_θ^k(x, i) [B, K, H, A] and its logit s_θ^k(x, i) [B, K] at grid
    positions `index` [B] int (module docstring); K = 1: the model's one output, logit 0.

    The model returns [B, H, A] for K = 1 and [B, K, H, A + 1] for K > 1 (the last channel
    a per-step score, averaged over H into the logit), e.g. models/unet1d.py.
    """
    grid = family.grid
    time = jnp.asarray(grid.model_time)[index]
    out = step_fn(params, context, x, time).astype(jnp.float32)
    batch, horizon, action_dim = x.shape
    num_hypotheses = int(num_hypotheses)
    expected = (
        (batch, horizon, action_dim)
        if num_hypotheses == 1
        else (batch, num_hypotheses, horizon, action_dim + 1)
    )
    if out.shape != expected:
        raise ValueError(
            f"consistency objective: objective.num_hypotheses={num_hypotheses} needs a model "
            f"output of shape {expected} (model.num_hypotheses={num_hypotheses}), got "
            f"{out.shape}"
        )
    if num_hypotheses == 1:
        outputs, logits = out[:, None], jnp.zeros((batch, 1), jnp.float32)
    else:
        outputs, logits = out[..., :action_dim], jnp.mean(out[..., action_dim], axis=2)
    a = jnp.asarray(grid.signal)[index][:, None, None]
    b = jnp.asarray(grid.noise)[index][:, None, None]
    skip = c_skip(a, b, sigma_data)

    def estimate(out_k):  # [B, H, A]
        return skip * x + (1.0 - skip * a) * family.denoise(x, out_k, index)

    return jax.vmap(estimate, in_axes=1, out_axes=1)(outputs), logits


def select_hypothesis(hypotheses: jax.Array, logits: jax.Array) -> jax.Array:
    """The hypothesis with the largest logit [B, H, A], of hypotheses [B, K, H, A] and
    logits [B, K]."""
    best = jnp.argmax(logits, axis=-1)
    return jnp.take_along_axis(hypotheses, best[:, None, None, None], axis=1)[:, 0]


def consistency_fn(
    step_fn: Callable,
    params,
    context,
    x: jax.Array,
    index: jax.Array,
    family,
    sigma_data,
    num_hypotheses: int = 1,
) -> jax.Array:
    """f_θ(x, i) [B, H, A] at grid positions `index` [B] int (module docstring): with
    K > 1 hypotheses, the one with the largest logit."""
    hypotheses, logits = consistency_hypotheses(
        step_fn, params, context, x, index, family, sigma_data, num_hypotheses
    )
    return select_hypothesis(hypotheses, logits)


def multiple_choice_loss(
    hypotheses: jax.Array,
    logits: jax.Array,
    target: jax.Array,
    batch: dict,
    *,
    relax: float,
    score_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The relaxed winner-takes-all loss of the module docstring.

    Args:
      hypotheses: f_θ^k [B, K, H, A].
      logits: s_θ^k [B, K].
      target: [B, H, A] (no gradient flows into it).
      batch: for its `schema.ACTION_PAD_MASK` [B, H] and `schema.ACTION_DIM_MASK` [B, A].
      relax: ε in [0, 1): the weight the K - 1 losing hypotheses share.
      score_weight: λ, the weight of the score head's cross-entropy.
    Returns:
      (scalar loss, aux {"mse": the winners' masked mse, "score_ce", "score_accuracy":
      how often the largest logit is the winner, "top_winner_share": the largest
      fraction of the batch one hypothesis wins (1: collapsed onto one hypothesis)}).
    """
    num_hypotheses = hypotheses.shape[1]
    weights = action_weights(
        target.shape, batch.get(schema.ACTION_PAD_MASK), batch.get(schema.ACTION_DIM_MASK)
    )
    # Σ_{h,a} w (f^k - target)² per example and hypothesis [B, K]; normalized over the
    # batch's real actions as regression.masked_mse does.
    squared = jnp.sum(weights[:, None] * jnp.square(hypotheses - target[:, None]), axis=(2, 3))
    total = jnp.maximum(jnp.sum(weights), 1.0)
    winner = jnp.argmin(jax.lax.stop_gradient(squared), axis=-1)  # [B]
    is_winner = jax.nn.one_hot(winner, num_hypotheses, dtype=jnp.float32)
    share = relax / max(num_hypotheses - 1, 1)
    responsibility = (1.0 - relax) * is_winner + share * (1.0 - is_winner)
    regression = jnp.sum(responsibility * squared) / total
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    score_ce = -jnp.mean(jnp.sum(is_winner * log_probs, axis=-1))
    winners_mse = jnp.sum(is_winner * squared) / total
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == winner).astype(jnp.float32))
    return regression + score_weight * score_ce, {
        "mse": winners_mse,
        "score_ce": score_ce,
        "score_accuracy": accuracy,
        "top_winner_share": jnp.max(jnp.mean(is_winner, axis=0)),
    }


def _teacher_step(teacher_apply_fn, teacher_params, context, x, index, family: _Family):
    """x̂_{n+1} = Φ(x_n, n → n+1) [B, H, A]: one step of the teacher's ODE solver."""
    return family.flow.step(teacher_apply_fn, teacher_params, context, x, index)


def _teacher_step_chain(teacher_step, teacher_params, context, x, index, family: _Family):
    """x̂_{n+k} [B, H, A]: k = `family.substeps` teacher solver steps from fine index n."""
    for sub in range(family.substeps):
        x = _teacher_step(teacher_step, teacher_params, context, x, index + sub, family)
    return x


def _teacher_solve_to_data(
    teacher_step, teacher_params, context, x, index, family: _Family
) -> jax.Array:
    """The teacher's ODE solved from fine index n [B] to the data end [B, H, A]: every
    fine step i = 0 .. N k - 1 is taken by the rows with i >= n (N k teacher calls)."""
    total = len(family.grid.signal) - 1

    def body(i, x):
        here = jnp.full_like(index, i)
        moved = _teacher_step(teacher_step, teacher_params, context, x, here, family)
        return jnp.where((i >= index)[:, None, None], moved, x)

    return jax.lax.fori_loop(0, total, body, x)


def _check(parameterization: str, teacher_solver: str | None = None, target=None) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; known: {PARAMETERIZATIONS}"
        )
    if teacher_solver is not None and teacher_solver not in TEACHER_SOLVERS[parameterization]:
        raise ValueError(
            f"teacher_solver {teacher_solver!r} is not one of {parameterization}'s "
            f"{TEACHER_SOLVERS[parameterization]}"
        )
    if target is not None and target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {TARGETS}")


def _check_hypotheses(num_hypotheses, relax: float = 0.0, score_weight: float = 0.0) -> None:
    if int(num_hypotheses) < 1:
        raise ValueError(f"objective.num_hypotheses={num_hypotheses} must be >= 1")
    if not 0.0 <= float(relax) < 1.0:
        raise ValueError(f"objective.hypothesis_relax={relax} must be in [0, 1)")
    if float(score_weight) < 0.0:
        raise ValueError(f"objective.score_weight={score_weight} must be >= 0")


def loss(
    apply_fn: Callable,
    params,
    batch: dict,
    rng: jax.Array,
    *,
    teacher_apply_fn: Callable | None = None,
    teacher_params=None,
    ema_params=None,
    parameterization: str = "flow",
    num_teacher_steps: int = 20,
    teacher_substeps: int = 1,
    teacher_solver: str | None = None,
    teacher_clip: bool = True,
    target: str = "ema",
    sigma_data: float = 0.0,
    time_scale: float = 100.0,
    time_convention: str = "noise_at_0",
    num_train_steps: int = 100,
    schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "epsilon",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    num_hypotheses: int = 1,
    hypothesis_relax: float = 0.0,
    score_weight: float = 0.1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The consistency distillation loss of the module docstring.

    Args:
      apply_fn: the student's `apply_fn(params, obs, x, time) -> [B, H, A]`.
      params: the student's parameters (differentiated).
      batch: `schema.ACTIONS` [B, H, A] (normalized), optional `schema.ACTION_PAD_MASK`
        [B, H], and the observation keys.
      rng: PRNG key, split into (grid position, ε) keys.
      teacher_apply_fn: the teacher's apply function (bound by `create_objective(...,
        teacher=)`); None is an error naming what is missing (unless teacher_solver is
        "data").
      teacher_params: the teacher's (EMA) parameters.
      ema_params: θ⁻ for `target="ema"` (the train step passes the state's EMA); None
        (a call outside the train step) falls back to θ with a stop-gradient.
      parameterization: the teacher's family, "flow" or "diffusion".
      num_teacher_steps: N, the student's grid.
      teacher_substeps: k, teacher solver steps per grid interval.
      teacher_solver: flow "euler" | "heun"; diffusion "ddim"; None: the first of these;
        "data": consistency training, no teacher (the one-sample estimate of the step).
      teacher_clip: clip the diffusion teacher's x̂_0 to [-1, 1] in its DDIM step.
      target: "ema" (θ⁻ = EMA), "online" (θ⁻ = sg θ), or "teacher": no bootstrap, the
        target is the teacher's ODE solved from x_n all the way to the data end
        (trajectory distillation at every grid position; (N - n) k teacher steps).
      sigma_data: σ_d of the EDM skip-scaling; 0: none (f = the teacher-style data
        estimate; see the module docstring).
      time_scale, time_convention: the flow teacher's (flow.probability_flow); the trainer
        fills them from the teacher's stored config (compat.check_distillation).
      num_train_steps, schedule, prediction_type, beta_start, beta_end: the diffusion
        teacher's (as in diffusion.loss), from its config the same way.
      num_hypotheses: K; > 1 trains a multiple-choice head (module docstring), which the
        model must have (`model.num_hypotheses` = K).
      hypothesis_relax: ε of the relaxed winner-takes-all (K > 1); 0: plain.
      score_weight: λ, the weight of the score head's cross-entropy (K > 1).
    Returns:
      (scalar loss, aux {"mse"}; K > 1: the winners' mse, plus "score_ce",
      "score_accuracy" and "top_winner_share" (multiple_choice_loss)).
    """
    _check(parameterization, teacher_solver, target)
    _check_hypotheses(num_hypotheses, hypothesis_relax, score_weight)
    teacher_solver = teacher_solver or TEACHER_SOLVERS[parameterization][0]
    from_data = teacher_solver == DATA_ESTIMATE
    if from_data and target == "teacher":
        raise ValueError(
            'target="teacher" needs a teacher: with teacher_solver="data" the target would '
            "be the data chunk itself (plain regression)"
        )
    if not from_data and (teacher_apply_fn is None or teacher_params is None):
        raise ValueError(
            "the consistency objective needs its teacher: objective.teacher_workdir names "
            "the teacher's run, and the trainer binds it (objectives.create_objective(..., "
            "teacher=Teacher(apply_fn, params)))"
        )
    settings = dict(
        time_scale=time_scale,
        time_convention=time_convention,
        num_train_steps=num_train_steps,
        schedule=schedule,
        prediction_type=prediction_type,
        beta_start=beta_start,
        beta_end=beta_end,
    )
    family = _family(
        parameterization,
        num_teacher_steps,
        teacher_substeps,
        settings,
        teacher_solver,
        teacher_clip,
    )
    grid = family.grid
    x0 = batch[schema.ACTIONS].astype(jnp.float32)
    obs = schema.observation_of(batch)
    n_rng, eps_rng = jax.random.split(rng)
    k = family.substeps
    n = jax.random.randint(n_rng, (x0.shape[0],), 0, int(num_teacher_steps)) * k  # fine
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)

    def interpolant(index):  # x_i = a_i x + b_i ε [B, H, A], the same x and ε for every i
        a = jnp.asarray(grid.signal)[index][:, None, None]
        b = jnp.asarray(grid.noise)[index][:, None, None]
        return a * x0 + b * eps

    x_n = interpolant(n)
    student_step, context = models.split_apply_fn(apply_fn, params, obs)
    if from_data:
        x_next = interpolant(n + k)
    else:
        teacher_step, teacher_context = models.split_apply_fn(teacher_apply_fn, teacher_params, obs)
        solve = _teacher_solve_to_data if target == "teacher" else _teacher_step_chain
        x_next = solve(teacher_step, teacher_params, teacher_context, x_n, n, family)
    if target == "teacher":
        # The teacher's whole remaining trajectory: no bootstrap from the student.
        target_value = x_next
    else:
        target_params = params if (target == "online" or ema_params is None) else ema_params
        target_params = jax.lax.stop_gradient(target_params)
        _, target_context = models.split_apply_fn(apply_fn, target_params, obs)
        target_value = consistency_fn(
            student_step,
            target_params,
            target_context,
            x_next,
            n + k,
            family,
            sigma_data,
            num_hypotheses,
        )
    target_value = jax.lax.stop_gradient(target_value)
    hypotheses, logits = consistency_hypotheses(
        student_step, params, context, x_n, n, family, sigma_data, num_hypotheses
    )
    if int(num_hypotheses) > 1:
        return multiple_choice_loss(
            hypotheses,
            logits,
            target_value,
            batch,
            relax=hypothesis_relax,
            score_weight=score_weight,
        )
    value = batch_masked_mse(hypotheses[:, 0], target_value, batch)
    return value, {"mse": value}


def sample_positions(num_teacher_steps: int, num_steps: int) -> np.ndarray:
    """Grid positions p_j = round(j N / S), j = 0 .. S-1, of S-step sampling [S] int."""
    if not 1 <= num_steps <= num_teacher_steps:
        raise ValueError(
            f"num_steps={num_steps} must be in [1, num_teacher_steps={num_teacher_steps}]"
        )
    return np.round(np.arange(num_steps) * num_teacher_steps / num_steps).astype(np.int32)


def sample_from_noise(
    apply_fn: Callable,
    params,
    obs: dict,
    rng: jax.Array,
    num_steps: int,
    noise: jax.Array,
    *,
    action_shape,
    parameterization: str = "flow",
    num_teacher_steps: int = 20,
    teacher_substeps: int = 1,
    sigma_data: float = 0.0,
    time_scale: float = 100.0,
    time_convention: str = "noise_at_0",
    num_train_steps: int = 100,
    schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "epsilon",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    clip_sample: bool = True,
    num_hypotheses: int = 1,
) -> jax.Array:
    """Multistep consistency sampling (module docstring) from a given x at grid position 0
    = `noise` [B, H, A]: S = `num_steps` model calls, one `lax.scan`.

    Args:
      apply_fn: `apply_fn(params, obs, x, time) -> [B, H, A]` (or a ContextApply).
      params: the student's parameters.
      obs: `schema.OBS_STATE` [B, T, S] (+ optional keys); B is read from it.
      rng: PRNG key of the re-noising before steps 2 .. S (one step is a deterministic
        function of `noise`).
      num_steps: S in [1, num_teacher_steps], static.
      noise: x at grid position 0 [B, H, A].
      action_shape: (H, A), static.
      clip_sample: clip each step's data estimate to [-1, 1].
      num_hypotheses: K; > 1: each step takes the hypothesis with the largest logit.
      Other arguments: as in `loss` (the grid and the skip-scaling).
    Returns:
      [B, H, A] float32.
    """
    _check(parameterization)
    _check_hypotheses(num_hypotheses)
    settings = dict(
        time_scale=time_scale,
        time_convention=time_convention,
        num_train_steps=num_train_steps,
        schedule=schedule,
        prediction_type=prediction_type,
        beta_start=beta_start,
        beta_end=beta_end,
    )
    family = _family(parameterization, num_teacher_steps, teacher_substeps, settings)
    grid = family.grid
    x = from_noise.checked_noise(noise, obs, action_shape)
    batch_size = x.shape[0]
    k = family.substeps
    positions = sample_positions(int(num_teacher_steps), int(num_steps)) * k  # fine grid
    following = np.append(positions[1:], int(num_teacher_steps) * k)  # data end last
    renoise = jax.random.normal(rng, (int(num_steps), *x.shape), jnp.float32)
    step_fn, context = models.split_apply_fn(apply_fn, params, obs)

    def body(x, per_step):
        position, next_signal, next_noise, z = per_step
        index = jnp.full((batch_size,), position, jnp.int32)
        x0 = consistency_fn(step_fn, params, context, x, index, family, sigma_data, num_hypotheses)
        if clip_sample:
            x0 = jnp.clip(x0, -1.0, 1.0)
        return next_signal * x0 + next_noise * z, None

    xs = (
        jnp.asarray(positions),
        jnp.asarray(grid.signal[following]),
        jnp.asarray(grid.noise[following]),
        renoise,
    )
    x, _ = jax.lax.scan(body, x, xs)
    return x


sample = from_noise.sampler(sample_from_noise, split_key=True)


def sampler_label(**_) -> str:
    """The sampler's name in results and tables."""
    return "consistency"
