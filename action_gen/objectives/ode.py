"""A noise-to-data family's probability-flow ODE, discretized: what distillation reads of a
teacher, stated by the family itself (flow.py, diffusion.py `probability_flow`).

Positions i = 0 (pure noise) .. N (the data), on which
    x_i = a_i x + b_i ε            (x the normalized chunk, ε ~ N(0, I)),
the network's time input is m_i (in the family's own convention and scale), the family's
data estimate from a network output `out` at position i is D(x, out, i), and one step of
its ODE solver is Φ(x, i → i + 1). Consistency distillation (consistency.py) builds its
grid, its consistency function and its teacher's steps from these alone, so a teacher in
any convention the family supports (flow's openpi-style `noise_at_1` included) is
distilled in its own time, never in a mirrored one.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Grid(NamedTuple):
    """The discretized ODE's coefficients at positions i = 0 (noise) .. N (data); float32.

    Attributes:
      model_time: m_i [N+1], the network's time input at position i.
      signal: a_i [N+1] (x_i = a_i x + b_i ε); flow: the data fraction t_i.
      noise: b_i [N+1].
      alpha_bar: ᾱ_i [N+1] = a_i² (diffusion's cumulative product; flow: t_i²).
    """

    model_time: np.ndarray
    signal: np.ndarray
    noise: np.ndarray
    alpha_bar: np.ndarray


class ProbabilityFlow(NamedTuple):
    """A family's ODE on a grid (module docstring).

    Attributes:
      grid: the `Grid`.
      denoise: `denoise(x [B, H, A], out [B, H, A], index [B] int) -> D`, the data estimate
        at positions `index` from the network's output there.
      step: `step(step_fn, params, context, x, index [B] int) -> x at index + 1`, one step of
        the family's solver (the network called through `step_fn(params, context, x,
        time)`, a `models.split_apply_fn` pair).
    """

    grid: Grid
    denoise: Callable
    step: Callable


def as_grid(model_time, signal, noise, alpha_bar) -> Grid:
    """A `Grid` of float32 arrays from float64 ones."""
    f32 = np.float32
    return Grid(
        np.asarray(model_time, f32),
        np.asarray(signal, f32),
        np.asarray(noise, f32),
        np.asarray(alpha_bar, f32),
    )
