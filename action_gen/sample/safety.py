"""Action safety filter: the last thing between a policy and the robot.

Per action dimension (A) it clips, in this order,
  1. position limits     a ← clip(a, low, high)                       (joint / target limits)
  2. velocity limits     a ← a_prev + clip(a - a_prev, -v_max Δt, v_max Δt)
  3. a workspace box     a[dims] ← clip(a[dims], box_low, box_high)  (e.g. the x, y of a
                         position-controlled end effector)
and reports what it changed. The box is applied after the velocity limit so the command
that leaves the filter is always inside the workspace, even when that means a larger step.
It acts on absolute position commands (the obstacle task's action is a target position);
`a_prev` is the last command the filter let through (none before the first step or after
`reset`, when the velocity limit is skipped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class SafetyReport:
    """What one `SafetyFilter.apply` call changed.

    Attributes:
      clipped: True when any value was changed.
      position: [..., A] bool, dims clipped by the position limits.
      velocity: [..., A] bool, dims clipped by the velocity limit.
      workspace: [..., A] bool, dims clipped by the workspace box.
      max_correction: largest |filtered - requested| over all values.
    """

    clipped: bool
    position: np.ndarray
    velocity: np.ndarray
    workspace: np.ndarray
    max_correction: float

    def describe(self) -> str:
        """One line naming the limits that acted and on which dims (for the log)."""
        if not self.clipped:
            return "no clipping"
        parts = []
        for name in ("position", "velocity", "workspace"):
            mask = getattr(self, name)
            dims = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).any(axis=0))
            if len(dims):
                parts.append(f"{name} limit on dims {dims.tolist()}")
        return "; ".join(parts) + f" (max correction {self.max_correction:.4g})"


def _as_limits(value, dim: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.broadcast_to(np.asarray(value, np.float64), (dim,)).copy()
    if not np.all(np.isfinite(arr) | np.isinf(arr)):
        raise ValueError(f"{name} must be numbers, got {value!r}")
    return arr


class SafetyFilter:
    """Clips commands to position limits, a per-step velocity limit and a workspace box.

    Args:
      action_dim: A.
      position_low, position_high: [A] (or scalars) bounds on every command; None: none.
      max_velocity: [A] (or scalar) v_max in action units per second; None: none.
      control_dt: Δt, seconds per control step (needed with max_velocity).
      workspace_dims: indices into the action of the coordinates the box bounds.
      workspace_low, workspace_high: [len(workspace_dims)] box corners.
    """

    def __init__(
        self,
        action_dim: int,
        *,
        position_low=None,
        position_high=None,
        max_velocity=None,
        control_dt: float | None = None,
        workspace_dims: Sequence[int] = (),
        workspace_low=None,
        workspace_high=None,
    ):
        self.action_dim = int(action_dim)
        self.low = _as_limits(position_low, self.action_dim, "position_low")
        self.high = _as_limits(position_high, self.action_dim, "position_high")
        if self.low is not None and self.high is not None and np.any(self.low > self.high):
            raise ValueError(f"position_low {self.low} > position_high {self.high}")
        self.max_step = None
        if max_velocity is not None:
            if control_dt is None or control_dt <= 0:
                raise ValueError("max_velocity needs control_dt > 0 (seconds per step)")
            v = _as_limits(max_velocity, self.action_dim, "max_velocity")
            if np.any(v < 0):
                raise ValueError(f"max_velocity must be >= 0, got {v}")
            self.max_step = v * float(control_dt)
        self.workspace_dims = np.asarray(list(workspace_dims), np.int64)
        if len(self.workspace_dims):
            if np.any(self.workspace_dims < 0) or np.any(self.workspace_dims >= self.action_dim):
                raise ValueError(
                    f"workspace_dims {self.workspace_dims.tolist()} out of range for A={action_dim}"
                )
            n = len(self.workspace_dims)
            self.box_low = _as_limits(workspace_low, n, "workspace_low")
            self.box_high = _as_limits(workspace_high, n, "workspace_high")
            if self.box_low is None or self.box_high is None:
                raise ValueError("workspace_dims needs workspace_low and workspace_high")
            if np.any(self.box_low > self.box_high):
                raise ValueError(f"workspace_low {self.box_low} > workspace_high {self.box_high}")
        self._prev: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the previous command (a new episode: no velocity limit on the first)."""
        self._prev = None

    def apply(self, action) -> tuple[np.ndarray, SafetyReport]:
        """Filters one command [A] (or a batch [N, A], one robot per row).

        Returns:
          (the filtered command, same shape, float32; the SafetyReport).
        """
        requested = np.asarray(action, np.float64)
        if requested.shape[-1] != self.action_dim:
            raise ValueError(
                f"action shape {requested.shape}: last dim must be A={self.action_dim}"
            )
        if not np.all(np.isfinite(requested)):
            raise ValueError(f"non-finite action {requested}: refusing to send it")
        a = requested.copy()
        position = np.zeros(a.shape, bool)
        if self.low is not None or self.high is not None:
            clipped = np.clip(
                a,
                self.low if self.low is not None else -np.inf,
                self.high if self.high is not None else np.inf,
            )
            position = clipped != a
            a = clipped
        velocity = np.zeros(a.shape, bool)
        if self.max_step is not None and self._prev is not None:
            step = a - self._prev
            limited = np.clip(step, -self.max_step, self.max_step)
            velocity = limited != step
            a = self._prev + limited
        workspace = np.zeros(a.shape, bool)
        if len(self.workspace_dims):
            sub = a[..., self.workspace_dims]
            boxed = np.clip(sub, self.box_low, self.box_high)
            workspace[..., self.workspace_dims] = boxed != sub
            a[..., self.workspace_dims] = boxed
        self._prev = a.copy()
        correction = float(np.max(np.abs(a - requested))) if a.size else 0.0
        report = SafetyReport(
            clipped=bool(position.any() or velocity.any() or workspace.any()),
            position=position,
            velocity=velocity,
            workspace=workspace,
            max_correction=correction,
        )
        return a.astype(np.float32), report
