"""Trajectory plots of obstacle rollouts (matplotlib, Agg canvas; no pyplot global state)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from action_gen.envs import obstacle
from action_gen.eval import metrics

# Outcome -> color. Success is split by side so that mode collapse is visible at a glance.
COLORS = {
    "success left": "tab:blue",
    "success right": "tab:green",
    "collision": "tab:red",
    "timeout": "tab:gray",
}


def _outcomes(result: dict[str, Any]) -> list[str]:
    side = result["side"]
    labels = []
    for i in range(len(result["success"])):
        if result["collision"][i]:
            labels.append("collision")
        elif not result["success"][i]:
            labels.append("timeout")
        else:
            labels.append("success left" if side[i] == obstacle.LEFT else "success right")
    return labels


def draw_rollouts(ax: Axes, result: dict[str, Any], title: str) -> None:
    """Draw every episode's obstacle, start, goal and trajectory onto `ax`."""
    # Layouts differ slightly per episode: faint overlapping discs show the spread.
    for c, r in zip(result["obstacle_center"], result["obstacle_radius"], strict=True):
        ax.add_patch(Circle(c, r, facecolor="0.5", edgecolor="none", alpha=0.06, zorder=1))
    mean_c = np.mean(result["obstacle_center"], axis=0)
    mean_r = float(np.mean(result["obstacle_radius"]))
    ax.add_patch(Circle(mean_c, mean_r, fill=False, edgecolor="0.3", lw=1.0, ls="--", zorder=2))
    labels = _outcomes(result)
    for pos, label in zip(result["positions"], labels, strict=True):
        ax.plot(pos[:, 0], pos[:, 1], color=COLORS[label], lw=0.8, alpha=0.7, zorder=3)
        if label == "collision":
            ax.plot(*pos[-1], marker="x", color=COLORS[label], ms=5, zorder=4)
    ax.scatter(*np.asarray(result["start"]).T, s=6, color="black", zorder=4)
    ax.scatter(
        *np.asarray(result["goal"]).T, s=40, marker="*", color="gold", ec="k", lw=0.3, zorder=4
    )
    w = obstacle.WORKSPACE_HALF_WIDTH
    ax.set_xlim(-w, w)
    ax.set_ylim(-w, w)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    s = metrics.summarize(result)
    ax.set_title(
        f"{title}\nsuccess {s['success_rate']:.0%}  collision {s['collision_rate']:.0%}  "
        f"L/R {s['mode_left_fraction']:.0%}/{s['mode_right_fraction']:.0%}",
        fontsize=9,
    )
    counts = {k: labels.count(k) for k in COLORS}
    handles = [Line2D([], [], color=COLORS[k], label=f"{k} ({n})") for k, n in counts.items()]
    ax.legend(handles=handles, loc="lower left", fontsize=7, frameon=True, framealpha=0.8)


def plot_rollouts(rollout_result: dict[str, Any], path: str, title: str) -> None:
    """Write a PNG of all trajectories of one rollout, colored by outcome."""
    fig = Figure(figsize=(5, 5), dpi=120)
    draw_rollouts(fig.add_subplot(), rollout_result, title)
    fig.tight_layout()
    fig.savefig(path)


def plot_comparison(results_by_policy: dict[str, dict[str, Any]], path: str) -> None:
    """Write a PNG with one panel per policy (same axes), e.g. regression vs diffusion."""
    n = len(results_by_policy)
    fig = Figure(figsize=(4.2 * n, 4.6), dpi=120)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, result) in zip(axes, results_by_policy.items(), strict=True):
        draw_rollouts(ax, result, name)
    fig.tight_layout()
    fig.savefig(path)
