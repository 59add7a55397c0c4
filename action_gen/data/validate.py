"""Dataset validator: finds the defects that silently ruin a policy before training starts.

  python -m action_gen.data.validate DIR [--action_quantiles=0.01,0.99]
      [--outlier_margin=1.0] [--strict]

One streaming pass over an RLDS dataset (images are not decoded) checks every episode:

  errors (non-zero exit; training refuses the dataset)
    missing_is_last      no step has is_last, or it is set before the final step
    bad_is_first         is_first not exactly at step 0
    length_mismatch      an observation / action / reward / instruction stream whose
                         length differs from the episode's action count
    non_finite           NaN or inf in a state, action, reward (or any float field)
    timestamp_order      duplicated or decreasing timestamps (an observation or step field
                         named "timestamp"), when present
    empty_episode        an episode with no steps
  warnings (reported; errors with --strict)
    timestamp_gap        consecutive timestamps further apart than 1.5 control periods
                         (the mapping's control_hz, or the LeRobot fps): dropped frames
    constant_dim         a state or action dimension with the same value in every step of
                         the dataset (min-max normalization maps it to a constant; a policy
                         cannot learn from it, and an action dim the expert never moves is
                         often a unit or mapping bug)
    action_outlier       an action outside the quantile fence, per dimension
                         [q_lo - m (q_hi - q_lo), q_hi + m (q_hi - q_lo)], q = the
                         configured quantiles over all steps, m = outlier_margin
                         (a teleoperation glitch stretches min-max normalization and
                         squashes every other action into a sliver of [-1, 1])

Called at train start as `validate.check_dataset(dataset_dir)`: raises ValueError with the
report on errors, logs warnings. A dataset in a foreign layout is validated through its
mapping (`check_dataset(dir, mapping=..., name=...)`, data/standardize.py): a key the
mapping names but the dataset lacks is an error listing the dataset's features; the
state / action checks run on the standardized state and action, the NaN / length /
timestamp checks on every raw field (named by its raw key). Every finding names the
dataset, the episode (its index in the split) and the key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
from flax import traverse_util

log = logging.getLogger(__name__)

ERROR = "error"
WARNING = "warning"
ERROR_CODES = (
    "missing_is_last",
    "bad_is_first",
    "length_mismatch",
    "non_finite",
    "timestamp_order",
    "empty_episode",
)
WARNING_CODES = ("timestamp_gap", "constant_dim", "action_outlier")
TIMESTAMP_KEYS = ("timestamp", "observation/timestamp")
# Examples printed per finding code (the count is always complete).
_EXAMPLES_PER_CODE = 5


@dataclasses.dataclass(frozen=True)
class Finding:
    severity: str  # ERROR or WARNING
    code: str  # one of ERROR_CODES / WARNING_CODES
    message: str
    episode: int | None = None  # dataset index, None for dataset-wide findings


@dataclasses.dataclass
class Report:
    """Everything the validator found, plus what it looked at."""

    path: str
    name: str = ""  # the dataset's name in the run (its mapping), "" for our own layout
    num_episodes: int = 0
    num_steps: int = 0
    findings: list[Finding] = dataclasses.field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def ok(self, strict: bool = False) -> bool:
        return not (self.findings if strict else self.errors)

    def format(self) -> str:
        """A human-readable summary: counts per code, a few examples each."""
        label = f"dataset {self.name!r} at {self.path}" if self.name else f"dataset {self.path}"
        lines = [
            f"{label}: {self.num_episodes} episodes, {self.num_steps} steps; "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        ]
        for code in ERROR_CODES + WARNING_CODES:
            found = [f for f in self.findings if f.code == code]
            if not found:
                continue
            lines.append(f"  {found[0].severity.upper()} {code}: {len(found)}")
            for f in found[:_EXAMPLES_PER_CODE]:
                where = "dataset" if f.episode is None else f"episode {f.episode}"
                lines.append(f"    {where}: {f.message}")
            if len(found) > _EXAMPLES_PER_CODE:
                lines.append(f"    ... and {len(found) - _EXAMPLES_PER_CODE} more")
        if not self.findings:
            lines.append("  OK: no defects found")
        return "\n".join(lines)


def _check_episode(index: int, traj: Mapping, add, control_hz: float = 0.0) -> int:
    """Per-episode checks on one trajectory (fields batched over its L steps); returns L."""
    fields = {
        k: np.asarray(v)
        for k, v in traverse_util.flatten_dict(
            {k: v for k, v in traj.items() if k != "episode_metadata"}, sep="/"
        ).items()
    }
    action = fields.get("action")
    if action is None:
        raise KeyError(f"episode {index} has no 'action' field; fields: {sorted(fields)}")
    length = int(action.shape[0])
    if length == 0:
        add(ERROR, "empty_episode", "no steps", index)
        return 0
    for key, value in fields.items():
        if value.ndim == 0:
            continue
        if value.shape[0] != length:
            add(
                ERROR,
                "length_mismatch",
                f"{key!r} has {value.shape[0]} steps, 'action' has {length}",
                index,
            )
    for key, value in fields.items():
        if value.dtype.kind == "f" and value.size and not np.isfinite(value).all():
            bad = np.argwhere(~np.isfinite(value.reshape(value.shape[0], -1)))
            add(
                ERROR,
                "non_finite",
                f"{key!r}: {len(bad)} non-finite values, first at step {bad[0][0]}",
                index,
            )
    is_last = fields.get("is_last")
    if is_last is None or not is_last.any():
        add(ERROR, "missing_is_last", "no step has is_last=True", index)
    elif not is_last[-1] or is_last[:-1].any():
        steps = np.flatnonzero(is_last).tolist()
        add(ERROR, "missing_is_last", f"is_last at steps {steps}, want only {length - 1}", index)
    is_first = fields.get("is_first")
    if is_first is not None and (not is_first[0] or is_first[1:].any()):
        steps = np.flatnonzero(is_first).tolist()
        add(ERROR, "bad_is_first", f"is_first at steps {steps}, want only 0", index)
    for key in TIMESTAMP_KEYS:
        stamps = fields.get(key)
        if stamps is None or stamps.shape[0] < 2:
            continue
        delta = np.diff(stamps.reshape(stamps.shape[0], -1)[:, 0].astype(np.float64))
        if (delta <= 0).any():
            step = int(np.argmax(delta <= 0)) + 1
            kind = "duplicated" if delta[step - 1] == 0 else "decreasing"
            add(ERROR, "timestamp_order", f"{key!r} {kind} at step {step}", index)
        elif control_hz > 0 and (delta > 1.5 / control_hz).any():
            step = int(np.argmax(delta > 1.5 / control_hz)) + 1
            add(
                WARNING,
                "timestamp_gap",
                f"{key!r} jumps {delta[step - 1]:.4g} s at step {step} "
                f"({int((delta > 1.5 / control_hz).sum())} gaps over 1.5 periods of "
                f"{control_hz:g} Hz)",
                index,
            )
    return length


def validate_trajectories(
    trajectories: Iterable[Mapping],
    *,
    path: str = "<trajectories>",
    action_quantiles: tuple[float, float] = (0.01, 0.99),
    outlier_margin: float = 1.0,
    constant_tol: float = 1e-8,
    name: str = "",
    control_hz: float = 0.0,
) -> Report:
    """Validates trajectories as `rlds.load_rlds_episodes(...).as_numpy_iterator()` yields
    them ({"observation": {"state": [L, S], ...}, "action": [L, A], "is_last": [L], ...}).

    Args:
      action_quantiles: (q_lo, q_hi) of the outlier fence, in [0, 1].
      outlier_margin: m, the fence's extension beyond the quantiles in units of
        (q_hi - q_lo).
      constant_tol: a dim whose max - min over the dataset is at most this is constant.
      name: the dataset's name in the run (for the report).
      control_hz: the control rate; consecutive timestamps more than 1.5 periods apart
        are reported (timestamp_gap). 0: not checked.
    """
    q_lo, q_hi = action_quantiles
    if not 0.0 <= q_lo < q_hi <= 1.0:
        raise ValueError(f"action_quantiles must satisfy 0 <= lo < hi <= 1, got {action_quantiles}")
    report = Report(path=path, name=name)

    def add(severity, code, message, episode=None):
        report.findings.append(Finding(severity, code, message, episode))

    actions, states, owners = [], [], []
    for index, traj in enumerate(trajectories):
        length = _check_episode(index, traj, add, control_hz)
        report.num_episodes += 1
        report.num_steps += length
        if length:
            action = np.asarray(traj["action"], np.float64).reshape(length, -1)
            actions.append(action)
            owners.append(np.full(length, index))
            state = traj.get("observation", {}).get("state")
            if state is not None and np.shape(state)[0] == length:
                states.append(np.asarray(state, np.float64).reshape(length, -1))
    if not report.num_episodes:
        add(ERROR, "empty_episode", "the dataset has no episodes")
        return report
    if not actions:
        return report

    for name, chunks in (("state", states), ("action", actions)):
        if not chunks or len({c.shape[1] for c in chunks}) != 1:
            continue
        values = np.concatenate(chunks)
        finite = np.where(np.isfinite(values), values, np.nan)
        spread = np.nanmax(finite, axis=0) - np.nanmin(finite, axis=0)
        for dim in np.flatnonzero(spread <= constant_tol):
            add(
                WARNING,
                "constant_dim",
                f"{name} dim {dim} is constant ({np.nanmin(finite[:, dim]):.6g}) in every step",
            )

    if len({a.shape[1] for a in actions}) == 1:
        values = np.concatenate(actions)
        episode_of = np.concatenate(owners)
        finite = np.isfinite(values).all(axis=1)
        lo, hi = np.quantile(values[finite], [q_lo, q_hi], axis=0)
        fence_lo = lo - outlier_margin * (hi - lo)
        fence_hi = hi + outlier_margin * (hi - lo)
        outside = finite[:, None] & ((values < fence_lo) | (values > fence_hi))
        for episode in np.unique(episode_of[outside.any(axis=1)]):
            rows = (episode_of == episode) & outside.any(axis=1)
            dims = np.flatnonzero(outside[rows].any(axis=0)).tolist()
            worst = values[rows][:, dims]
            add(
                WARNING,
                "action_outlier",
                f"{int(rows.sum())} steps outside the fence in action dims {dims} "
                f"(values {worst.min():.4g}..{worst.max():.4g}; fence per dim "
                f"{np.round(fence_lo[dims], 4).tolist()}..{np.round(fence_hi[dims], 4).tolist()})",
                int(episode),
            )
    return report


def validate_dataset(
    data_dir: str | os.PathLike, *, mapping: Mapping | None = None, name: str = "", **kwargs
) -> Report:
    """Validates the RLDS dataset in `data_dir` (see `validate_trajectories` for kwargs),
    through `mapping` when it is in a foreign layout (module docstring).

    Raises:
      standardize.LayoutError: the mapping names keys the dataset lacks.
    """
    from action_gen.data import rlds, standardize  # TensorFlow, only when reading from disk

    path = rlds.resolve_dataset_dir(data_dir)
    episodes = rlds.load_rlds_episodes(path, decode_images=False)
    if mapping is not None:
        described = standardize.describe_features(rlds.load_builder(path).info.features)
        standardize.check_against_features(mapping, described, os.fspath(path), name or "?")
        kwargs.setdefault("control_hz", float(standardize.check_mapping(mapping)["control_hz"]))
        # Untrimmed, so the standardized action keeps the raw fields' length.
        untrimmed = dict(standardize.check_mapping(mapping), trim_zero_actions=False)
        fn, _ = standardize.make_standardizer(untrimmed, described, images=False)

        def with_standardized(traj):
            std = fn(traj)
            out = dict(traj)
            # The raw action parts stay (NaN checks name their raw keys); "action" and
            # observation "state" become what the policy is trained on.
            out["raw_action"] = traj["action"]
            out["action"] = std["action"]
            out["observation"] = dict(traj["observation"], state=std["observation"]["state"])
            return out

        episodes = episodes.map(with_standardized)
    return validate_trajectories(
        episodes.as_numpy_iterator(), path=os.fspath(path), name=name, **kwargs
    )


def check_dataset(
    data_dir: str | os.PathLike,
    *,
    strict: bool = False,
    mapping: Mapping | None = None,
    name: str | None = None,
    **kwargs,
) -> Report:
    """The train-start hook: logs the report; raises ValueError (with it) on errors (or on
    any finding if `strict`)."""
    report = validate_dataset(data_dir, mapping=mapping, name=name or "", **kwargs)
    return enforce(report, strict)


def enforce(report: Report, strict: bool = False) -> Report:
    """Raises ValueError (with the report) on errors (or on any finding if `strict`), else
    logs the report (warnings as warnings) and returns it."""
    if not report.ok(strict):
        raise ValueError(f"dataset validation failed:\n{report.format()}")
    (log.warning if report.findings else log.info)("%s", report.format())
    return report


def main(argv: list[str]) -> int:
    from absl import flags

    from action_gen import cli

    values = flags.FLAGS
    if len(argv) != 2:
        raise cli.UserError(
            "usage: python -m action_gen.data.validate DIR [--strict] [--action_quantiles=..]"
        )
    from action_gen.data import lerobot

    if lerobot.is_lerobot_dataset(argv[1]):
        raise cli.UserError(
            f"{argv[1]} is a LeRobot dataset: validation reads RLDS. Convert it first "
            f"(python -m action_gen.data.convert_lerobot {argv[1]} DST) and validate DST, or "
            "train on it directly (the data step converts and validates it)"
        )
    lo, hi = (float(x) for x in values.action_quantiles.split(","))
    report = validate_dataset(
        argv[1], action_quantiles=(lo, hi), outlier_margin=values.outlier_margin
    )
    print(report.format())
    return 0 if report.ok(values.strict) else 1


def entry_point() -> None:
    """`python -m action_gen.data.validate` / `action-gen-validate`. Flags are defined only
    when run as a program (the train loop imports this module)."""
    from absl import flags

    from action_gen import cli

    flags.DEFINE_string("action_quantiles", "0.01,0.99", "q_lo,q_hi of the outlier fence.")
    flags.DEFINE_float("outlier_margin", 1.0, "Fence extension in units of q_hi - q_lo.")
    flags.DEFINE_bool("strict", False, "Warnings fail the check too.")
    cli.absl_main(main, __doc__, module=__name__)


if __name__ == "__main__":
    entry_point()
