"""Consistency distillation of a trained diffusion or flow teacher (few-step sampling).

A consistency function f_θ(x, τ) maps any point of the teacher's probability-flow ODE
trajectory back to the trajectory's data end, so one model call turns noise into a chunk
(Song et al. 2023; Consistency Policy, Prasad et al. 2024). The student is the teacher's
network (same model, same time input, usually initialized from the teacher's weights:
`train.init_from_teacher`), trained on the teacher's discretized ODE.

Grid. Positions i = 0 .. N (N = `num_teacher_steps`), i = 0 pure noise, i = N the data,
with x_i = a_i x + b_i ε (x the normalized chunk, ε ~ N(0, I)) and the model's time input
m_i, in the teacher's own convention (`parameterization`):
  flow:       t_i = i / N,  a_i = t_i,  b_i = 1 - t_i,  m_i = t_i · time_scale;
              data estimate D(x, out, i) = x + (1 - t_i) out            (out = velocity)
  diffusion:  k_i = the DDIM chain of N steps over K = num_train_steps (diffusion.
              sample_timesteps: [90, 80, ..., 0] for K = 100, N = 10), then the data end;
              a_i = sqrt(ᾱ_{k_i}), b_i = sqrt(1 - ᾱ_{k_i}) (a_N = 1, b_N = 0), m_i = k_i;
              D = diffusion.predict_x0_and_eps(x, out, ᾱ, prediction_type)[0].

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

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from action_gen import models
from action_gen.data import schema
from action_gen.objectives import diffusion, from_noise
from action_gen.objectives.regression import batch_masked_mse

PARAMETERIZATIONS = ("flow", "diffusion")
# "data": consistency *training* (no teacher): x̂_{n+1} = a_{n+1} x + b_{n+1} ε with the
# same ε, the one-sample estimate of the ODE step (Song et al. 2023, Sec. 5).
DATA_ESTIMATE = "data"
TEACHER_SOLVERS = {"flow": ("euler", "heun", DATA_ESTIMATE), "diffusion": ("ddim", DATA_ESTIMATE)}
TARGETS = ("ema", "online", "teacher")


class Grid(NamedTuple):
    """The teacher's discretized ODE, positions i = 0 (noise) .. N (data); numpy float32.

    Attributes:
      model_time: m_i [N+1], the network's time input.
      signal: a_i [N+1] (x_i = a_i x + b_i ε).
      noise: b_i [N+1].
      alpha_bar: ᾱ_i [N+1] (diffusion; a_i² for flow, unused there).
    """

    model_time: np.ndarray
    signal: np.ndarray
    noise: np.ndarray
    alpha_bar: np.ndarray


@functools.lru_cache(maxsize=32)
def make_grid(
    parameterization: str,
    num_teacher_steps: int,
    *,
    time_scale: float = 100.0,
    num_train_steps: int = 100,
    schedule: str = "squaredcos_cap_v2",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Grid:
    """The grid of the module docstring (computed in float64, stored as float32)."""
    n = int(num_teacher_steps)
    if n < 1:
        raise ValueError(f"num_teacher_steps={n} must be >= 1")
    if parameterization == "flow":
        t = np.arange(n + 1, dtype=np.float64) / n
        a, b, m = t, 1.0 - t, t * float(time_scale)
        alpha_bar = t**2
    elif parameterization == "diffusion":
        ks, _ = diffusion.sample_timesteps(int(num_train_steps), n)
        cumprod = np.cumprod(
            1.0 - diffusion._betas_np(schedule, int(num_train_steps), beta_start, beta_end)
        )
        alpha_bar = np.concatenate([cumprod[ks], [1.0]])
        a, b = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
        m = np.concatenate([ks.astype(np.float64), [0.0]])
    else:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; known: {PARAMETERIZATIONS}"
        )
    f32 = np.float32
    return Grid(m.astype(f32), a.astype(f32), b.astype(f32), alpha_bar.astype(f32))


def c_skip(signal: jax.Array, noise: jax.Array, sigma_data: float) -> jax.Array:
    """c_skip(σ) / a = σ_d² a / (b² + σ_d² a²) with σ = b / a: the weight on x itself (so
    that f = c x + (1 - c_skip) D), finite at a = 0; c_skip itself is this times a.
    σ_d = 0: no skip term (f = D, the teacher's own data estimate)."""
    if sigma_data == 0:
        return jnp.zeros_like(signal * noise)
    s2 = sigma_data**2
    return s2 * signal / (noise**2 + s2 * signal**2)


class _Family(NamedTuple):
    """What the consistency function needs of the teacher's parameterization."""

    grid: Grid  # the fine grid: N k + 1 points; the student's positions are i k
    denoise: Callable  # (x, out, fine index [B]) -> data estimate [B, H, A]
    substeps: int  # k


def _family(
    parameterization: str,
    num_teacher_steps: int,
    teacher_substeps: int,
    time_scale: float,
    num_train_steps: int,
    schedule: str,
    prediction_type: str,
    beta_start: float,
    beta_end: float,
) -> _Family:
    if int(teacher_substeps) < 1:
        raise ValueError(f"teacher_substeps={teacher_substeps} must be >= 1")
    grid = make_grid(
        parameterization,
        int(num_teacher_steps) * int(teacher_substeps),
        time_scale=time_scale,
        num_train_steps=num_train_steps,
        schedule=schedule,
        beta_start=beta_start,
        beta_end=beta_end,
    )
    if parameterization == "flow":

        def denoise(x, out, index):
            t = jnp.asarray(grid.signal)[index][:, None, None]
            return x + (1.0 - t) * out

    else:
        diffusion._check(prediction_type)

        def denoise(x, out, index):
            alpha_bar = jnp.asarray(grid.alpha_bar)[index][:, None, None]
            return diffusion.predict_x0_and_eps(x, out, alpha_bar, prediction_type)[0]

    return _Family(grid, denoise, int(teacher_substeps))


def consistency_fn(
    step_fn: Callable, params, context, x: jax.Array, index: jax.Array, family, sigma_data
) -> jax.Array:
    """f_θ(x, i) [B, H, A] at grid positions `index` [B] int (module docstring)."""
    grid = family.grid
    time = jnp.asarray(grid.model_time)[index]
    out = step_fn(params, context, x, time).astype(jnp.float32)
    a = jnp.asarray(grid.signal)[index][:, None, None]
    b = jnp.asarray(grid.noise)[index][:, None, None]
    skip = c_skip(a, b, sigma_data)
    return skip * x + (1.0 - skip * a) * family.denoise(x, out, index)


def _teacher_step(
    teacher_apply_fn,
    teacher_params,
    context,
    x,
    index,
    family: _Family,
    parameterization: str,
    solver: str,
    prediction_type: str,
    teacher_clip: bool,
):
    """x̂_{n+1} = Φ(x_n, n → n+1) [B, H, A]: one step of the teacher's ODE solver."""
    grid = family.grid
    m = jnp.asarray(grid.model_time)
    out = teacher_apply_fn(teacher_params, context, x, m[index]).astype(jnp.float32)
    if parameterization == "diffusion":
        ab = jnp.asarray(grid.alpha_bar)
        return diffusion.ddim_step(
            x,
            out,
            ab[index][:, None, None],
            ab[index + 1][:, None, None],
            None,
            prediction_type=prediction_type,
            clip_sample=teacher_clip,
        )
    t = jnp.asarray(grid.signal)
    dt = (t[index + 1] - t[index])[:, None, None]
    x_next = x + dt * out
    if solver == "heun":
        out_next = teacher_apply_fn(teacher_params, context, x_next, m[index + 1])
        x_next = x + 0.5 * dt * (out + out_next.astype(jnp.float32))
    return x_next


def _teacher_step_chain(
    teacher_step, teacher_params, context, x, index, family: _Family, *settings
) -> jax.Array:
    """x̂_{n+k} [B, H, A]: k = `family.substeps` teacher solver steps from fine index n."""
    for sub in range(family.substeps):
        x = _teacher_step(teacher_step, teacher_params, context, x, index + sub, family, *settings)
    return x


def _teacher_solve_to_data(
    teacher_step, teacher_params, context, x, index, family: _Family, *settings
) -> jax.Array:
    """The teacher's ODE solved from fine index n [B] to the data end [B, H, A]: every
    fine step i = 0 .. N k - 1 is taken by the rows with i >= n (N k teacher calls)."""
    total = len(family.grid.signal) - 1

    def body(i, x):
        here = jnp.full_like(index, i)
        moved = _teacher_step(teacher_step, teacher_params, context, x, here, family, *settings)
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
    num_train_steps: int = 100,
    schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "epsilon",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
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
      time_scale: the flow teacher's time scale.
      num_train_steps, schedule, prediction_type, beta_start, beta_end: the diffusion
        teacher's (as in diffusion.loss).
    Returns:
      (scalar loss, aux {"mse"}).
    """
    _check(parameterization, teacher_solver, target)
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
    family = _family(
        parameterization,
        num_teacher_steps,
        teacher_substeps,
        time_scale,
        num_train_steps,
        schedule,
        prediction_type,
        beta_start,
        beta_end,
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
        x_next = solve(
            teacher_step,
            teacher_params,
            teacher_context,
            x_n,
            n,
            family,
            parameterization,
            teacher_solver,
            prediction_type,
            teacher_clip,
        )
    if target == "teacher":
        # The teacher's whole remaining trajectory: no bootstrap from the student.
        target_value = x_next
    else:
        target_params = params if (target == "online" or ema_params is None) else ema_params
        target_params = jax.lax.stop_gradient(target_params)
        _, target_context = models.split_apply_fn(apply_fn, target_params, obs)
        target_value = consistency_fn(
            student_step, target_params, target_context, x_next, n + k, family, sigma_data
        )
    pred = consistency_fn(student_step, params, context, x_n, n, family, sigma_data)
    value = batch_masked_mse(pred, jax.lax.stop_gradient(target_value), batch)
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
    num_train_steps: int = 100,
    schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "epsilon",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    clip_sample: bool = True,
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
      Other arguments: as in `loss` (the grid and the skip-scaling).
    Returns:
      [B, H, A] float32.
    """
    _check(parameterization)
    family = _family(
        parameterization,
        num_teacher_steps,
        teacher_substeps,
        time_scale,
        num_train_steps,
        schedule,
        prediction_type,
        beta_start,
        beta_end,
    )
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
        x0 = consistency_fn(step_fn, params, context, x, index, family, sigma_data)
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
