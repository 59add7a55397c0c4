"""Normalization statistics and the affine maps built from them.

This module is on the inference path (a served policy unnormalizes its actions), so it
must not import TensorFlow. Every map is ``x * scale + offset`` with ``scale`` and
``offset`` precomputed in numpy, so the same function works on numpy arrays, jax arrays
(also under jit) and tf tensors.

Stats layout, as saved beside a dataset and in a checkpoint::

    {"state": {"min": [S], "max": [S], "mean": [S], "std": [S], "q01": [S], "q99": [S],
               "count": N},
     "actions": {... same fields, [A] ...}}

Top-level keys that start with ``_`` are metadata (e.g. the dataset fingerprint of a
cached file) and are not features.

Modes (per dimension):

  ``minmax``    [min, max] -> [-1, 1]:  y = 2 (x - min) / (max - min) - 1.
  ``meanstd``   y = (x - mean) / std.
  ``quantile``  [q01, q99] -> [-1, 1], same formula as minmax. Values outside the 1st/99th
                percentile land outside [-1, 1]: normalize does not clip, because clipping
                would make unnormalize lossy and hide outliers from the caller. Clip in the
                pipeline or the objective if the model needs a bounded target.
  ``none``      identity.

A dimension whose range (max - min, q99 - q01, or std) is below 1e-6 is constant: it
normalizes to 0 and unnormalizes to the stored constant exactly (scale 0, offset = the
constant), instead of dividing by ~0.
"""

import json
import math
import os
from collections.abc import Iterable, Mapping

import numpy as np

MODES = ("minmax", "meanstd", "quantile", "none")
STAT_KEYS = ("min", "max", "mean", "std", "q01", "q99", "count")
STATE = "state"
ACTIONS = "actions"

# Range below which a dimension is treated as constant.
_EPS = 1e-6
# Rows kept for the quantiles: exact below this many rows, a uniform sample above.
DEFAULT_MAX_QUANTILE_SAMPLES = 200_000


class NormStatsAccumulator:
    """One streaming pass over chunks of rows [N, D] -> min, max, mean, std, q01, q99.

    Mean and variance are merged chunk by chunk in float64 with Chan et al.'s parallel
    update, which stays accurate where a running sum of squares would cancel. Quantiles
    come from a uniform reservoir sample (Vitter's algorithm R, vectorized per chunk) of
    at most ``max_samples`` rows drawn with a fixed seed, so they are exact when the
    data has at most that many rows and reproducible otherwise.
    """

    def __init__(self, max_samples: int = DEFAULT_MAX_QUANTILE_SAMPLES, seed: int = 0):
        self._max_samples = int(max_samples)
        self._rng = np.random.default_rng(seed)
        self._count = 0
        self._dim = None
        self._min = self._max = self._mean = self._m2 = None
        self._reservoir = None

    def update(self, rows) -> None:
        """Adds a chunk of rows [N, D] (or [N] for D = 1)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows[:, None]
        if rows.ndim != 2:
            raise ValueError(f"expected rows of shape [N, D], got {rows.shape}")
        n = rows.shape[0]
        if n == 0:
            return
        if self._dim is None:
            self._dim = rows.shape[1]
            self._min = np.full(self._dim, np.inf)
            self._max = np.full(self._dim, -np.inf)
            self._mean = np.zeros(self._dim)
            self._m2 = np.zeros(self._dim)
            self._reservoir = np.empty((min(self._max_samples, 1 << 16), self._dim))
        elif rows.shape[1] != self._dim:
            raise ValueError(f"row width changed from {self._dim} to {rows.shape[1]}")

        self._min = np.minimum(self._min, rows.min(axis=0))
        self._max = np.maximum(self._max, rows.max(axis=0))
        chunk_mean = rows.mean(axis=0)
        chunk_m2 = ((rows - chunk_mean) ** 2).sum(axis=0)
        total = self._count + n
        delta = chunk_mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + chunk_m2 + delta**2 * (self._count * n / total)
        self._sample(rows)
        self._count = total

    def _sample(self, rows: np.ndarray) -> None:
        k = self._max_samples
        n = rows.shape[0]
        filled = min(self._count, k)
        # Fill phase: the first k rows all go in.
        take = min(k - filled, n)
        if take > 0:
            needed = filled + take
            if needed > self._reservoir.shape[0]:  # grow geometrically up to k
                grown = np.empty((min(k, max(needed, 2 * self._reservoir.shape[0])), self._dim))
                grown[:filled] = self._reservoir[:filled]
                self._reservoir = grown
            self._reservoir[filled:needed] = rows[:take]
        # Replacement phase: row with global index i replaces slot j ~ U[0, i] if j < k.
        # Within a chunk numpy's fancy assignment keeps the last write to a slot, which is
        # what the sequential algorithm would do.
        if take < n:
            index = self._count + np.arange(take, n)
            slots = self._rng.integers(0, index + 1)
            keep = slots < k
            self._reservoir[slots[keep]] = rows[take:][keep]

    def finalize(self) -> dict:
        """Returns the stats as a JSON-serializable dict of lists (see module docstring)."""
        if self._count == 0:
            raise ValueError("cannot compute normalization stats from zero rows")
        sample = self._reservoir[: min(self._count, self._max_samples)]
        q01, q99 = np.quantile(sample, [0.01, 0.99], axis=0)
        std = np.sqrt(np.maximum(self._m2 / self._count, 0.0))
        out = {
            "min": self._min,
            "max": self._max,
            "mean": self._mean,
            "std": std,
            "q01": q01,
            "q99": q99,
        }
        result = {k: [float(x) for x in v] for k, v in out.items()}
        result["count"] = int(self._count)
        return result


def compute_norm_stats(
    arrays_iterable: Iterable,
    *,
    max_quantile_samples: int = DEFAULT_MAX_QUANTILE_SAMPLES,
    seed: int = 0,
) -> dict:
    """Stats of one feature from a single pass over chunks of rows.

    Args:
      arrays_iterable: chunks of rows, each [N, D] (or [N]); e.g. one episode's actions
        [L, A] per chunk.
      max_quantile_samples: size of the reservoir the quantiles are taken on.
      seed: seed of the reservoir sample.

    Returns:
      ``{"min", "max", "mean", "std", "q01", "q99": list[float] of length D,
      "count": int}`` (std is the population std, ddof = 0).
    """
    acc = NormStatsAccumulator(max_quantile_samples, seed)
    for rows in arrays_iterable:
        acc.update(rows)
    return acc.finalize()


def _bounds(stats: Mapping, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(center, half_range) such that y = (x - center) / half_range, in float64."""
    try:
        if mode == "minmax":
            lo, hi = np.asarray(stats["min"], np.float64), np.asarray(stats["max"], np.float64)
        elif mode == "quantile":
            lo, hi = np.asarray(stats["q01"], np.float64), np.asarray(stats["q99"], np.float64)
        elif mode == "meanstd":
            return np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
        else:
            raise ValueError(f"unknown normalization mode {mode!r}; expected one of {MODES}")
    except KeyError as e:
        raise KeyError(f"normalization mode {mode!r} needs stats key {e.args[0]!r}") from None
    return (hi + lo) / 2, (hi - lo) / 2


def _affine(
    stats: Mapping, mode: str, inverse: bool, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) of normalize (or of unnormalize if ``inverse``), computed in float64
    and returned in ``dtype`` (float32 by default)."""
    center, half = _bounds(stats, mode)
    constant = half < _EPS / 2 if mode != "meanstd" else half < _EPS
    safe = np.where(constant, 1.0, half)
    if inverse:
        # x * half + center; constant dims: 0 * x + the constant (minmax/quantile store lo;
        # for them center == lo == hi up to the tolerance, so use lo to be exact).
        scale = np.where(constant, 0.0, half)
        if mode == "minmax":
            const = np.asarray(stats["min"], np.float64)
        elif mode == "quantile":
            const = np.asarray(stats["q01"], np.float64)
        else:
            const = center
        offset = np.where(constant, const, center)
    else:
        scale = np.where(constant, 0.0, 1.0 / safe)
        offset = np.where(constant, 0.0, -center / safe)
    return scale.astype(dtype), offset.astype(dtype)


def normalize(x, stats: Mapping, mode: str):
    """Maps raw values to the normalized space of ``mode`` (no clipping).

    Args:
      x: [..., D] numpy / jax array or tf tensor.
      stats: the stats of this feature (e.g. ``all_stats["actions"]``).
      mode: one of ``MODES``.

    Returns:
      [..., D] normalized values, same array type as ``x``.
    """
    if mode == "none":
        return x
    scale, offset = _affine(stats, mode, inverse=False)
    return x * scale + offset


def unnormalize(x, stats: Mapping, mode: str):
    """Inverse of ``normalize``: [..., D] normalized -> [..., D] raw values."""
    if mode == "none":
        return x
    scale, offset = _affine(stats, mode, inverse=True)
    return x * scale + offset


def validate_norm_stats(
    stats, *, required: Iterable[str] = (STATE, ACTIONS), source: str = "norm stats"
) -> None:
    """Raises ValueError naming ``source`` and the missing feature / key if malformed."""
    if not isinstance(stats, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(stats).__name__}")
    for name in required:
        if name not in stats:
            raise ValueError(f"{source}: missing feature {name!r} (has {sorted(stats)})")
    for name, feature in stats.items():
        if name.startswith("_"):
            continue
        if not isinstance(feature, Mapping):
            raise ValueError(f"{source}: feature {name!r} is not an object")
        for key in STAT_KEYS:
            if key not in feature:
                raise ValueError(f"{source}: feature {name!r} is missing key {key!r}")
        dims = {len(feature[k]) for k in STAT_KEYS if k != "count"}
        if len(dims) != 1:
            raise ValueError(f"{source}: feature {name!r} has stats of different lengths")
        if any(not math.isfinite(v) for k in STAT_KEYS if k != "count" for v in feature[k]):
            raise ValueError(f"{source}: feature {name!r} has non-finite stats")


def save_norm_stats(stats: Mapping, path: str | os.PathLike) -> None:
    """Writes stats as JSON atomically (a reader never sees a half-written file)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(stats, f, indent=1)
    os.replace(tmp, path)


def load_norm_stats(path: str | os.PathLike, *, required: Iterable[str] = (STATE, ACTIONS)) -> dict:
    """Reads and validates stats written by ``save_norm_stats``.

    Raises:
      FileNotFoundError: naming ``path`` when it does not exist.
      ValueError: naming ``path`` (and the feature / key) when it is not valid stats JSON.
    """
    path = os.fspath(path)
    try:
        with open(path) as f:
            stats = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"normalization stats file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"normalization stats file {path} is not valid JSON: {e}") from None
    validate_norm_stats(stats, required=required, source=path)
    return stats


def feature_dims(stats: dict) -> tuple[int, int]:
    """(state dim S, action dim A) read off a dataset's normalization statistics."""
    return len(stats["state"]["min"]), len(stats["actions"]["min"])


# ------------------------------------------------------------------ per-dataset statistics
#
# A run over several datasets of different robots normalizes each window with its own
# dataset's stats. The checkpoint then holds, besides the top-level "state" / "actions"
# (the model's dims: every dataset's dims padded to the largest), each dataset's own stats
# under DATASETS, keyed by dataset name, in the run's dataset order:
#
#     {"state": {... [S_max]}, "actions": {... [A_max]},
#      "_datasets": {"bridge": {"state": {... [S_b]}, "actions": {... [A_b]}}, ...}}
#
# The top-level entries are the first dataset's stats zero-padded (padded dims are
# constant 0: they normalize to 0), which is exactly that dataset's stats for a
# one-dataset run.

DATASETS = "_datasets"
# Bookkeeping a dataset's stats carry beside "state" / "actions" (data/pipeline.py,
# data/memory.py): the fingerprint of the data they were computed from, and the episodes and
# steps they cover (the training stream's block size).
FINGERPRINT = "_fingerprint"
EPISODES = "_episodes"
STEPS = "_steps"
# In a dataset's entry: the camera slots it has (a policy for its robot asks only for
# these; the others are black with image_mask False, as in training).
CAMERAS = "_cameras"


def affine_params(stats: Mapping, mode: str, *, inverse: bool = False, dtype=np.float32):
    """(scale [D], offset [D]) in ``dtype`` with normalize(x) = x * scale + offset (or of
    unnormalize with ``inverse``); mode "none" is (1, 0)."""
    if mode == "none":
        dim = len(stats["min"])
        return np.ones(dim, dtype), np.zeros(dim, dtype)
    return _affine(stats, mode, inverse=inverse, dtype=dtype)


def pad_stats(stats: Mapping, dim: int) -> dict:
    """One feature's stats [D] zero-padded to [dim]: padded dims are the constant 0."""
    width = len(stats["min"])
    if width > dim:
        raise ValueError(f"cannot pad stats of {width} dims to {dim}")
    out = {k: list(stats[k]) + [0.0] * (dim - width) for k in STAT_KEYS if k != "count"}
    out["count"] = stats["count"]
    return out


def combine_dataset_stats(per_dataset: Mapping[str, Mapping]) -> dict:
    """{name: {"state", "actions", ...}} (in the run's order) -> the checkpoint layout above."""
    if not per_dataset:
        raise ValueError("combine_dataset_stats needs at least one dataset")
    names = list(per_dataset)
    state_dim = max(feature_dims(per_dataset[n])[0] for n in names)
    action_dim = max(feature_dims(per_dataset[n])[1] for n in names)
    first = per_dataset[names[0]]
    return {
        STATE: pad_stats(first[STATE], state_dim),
        ACTIONS: pad_stats(first[ACTIONS], action_dim),
        DATASETS: {n: dict(per_dataset[n]) for n in names},
    }


def dataset_names(stats: Mapping) -> list[str]:
    """The datasets with stats of their own in `stats` (empty for a one-layout run)."""
    return list(stats.get(DATASETS, {}))


def dataset_stats(stats: Mapping, name: str | None) -> dict:
    """Dataset `name`'s own stats from checkpoint-layout `stats`.

    Without per-dataset stats (one native dataset, or a jointly normalized mixture) the
    top-level stats are every dataset's; `name` is then ignored.

    Raises:
      ValueError: `name` is None or unknown while several datasets have stats.
    """
    named = stats.get(DATASETS)
    if not named:
        return {STATE: stats[STATE], ACTIONS: stats[ACTIONS]}
    if name is None:
        if len(named) == 1:
            return dict(next(iter(named.values())))
        raise ValueError(
            f"these norm stats cover several datasets {list(named)}: say which one's to use "
            "(Policy.from_checkpoint(..., dataset=NAME), serve --dataset=NAME)"
        )
    if name not in named:
        raise ValueError(f"no norm stats for dataset {name!r}; the run had {list(named)}")
    return dict(named[name])
