"""The training input stream: RLDS episodes -> windows -> shuffled, normalized batches.

Order of operations (per process)::

    episodes (file order, this process's shard)
      -> shuffle episodes          (seeded; decorrelates neighbouring episodes)
      -> windows, one per step     (windows.window_trajectory)
      -> shuffle windows           (seeded, reshuffled every epoch)
      -> repeat forever -> batch (drop remainder) -> normalize -> prefetch

Every random op has a fixed seed and the tf.data options ask for deterministic order, so
the stream is a pure function of (dataset, seed, shard). Resuming at batch k is then
``dataset.skip(k)``: it recomputes and drops k batches, which costs time proportional
to k but reproduces the uninterrupted stream exactly.
"""

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from action_gen.data import augment, rlds, schema, windows
from action_gen.data import normalize as norm

log = logging.getLogger(__name__)

NORM_STATS_FILE = "action_gen_norm_stats.json"
_FINGERPRINT = "_fingerprint"
# Episodes held in the episode shuffle buffer (whole episodes, so keep it modest).
_EPISODE_SHUFFLE_BUFFER = 64


def dataset_fingerprint(data_dir) -> str:
    """sha256 of the dataset's dataset_info.json (changes with shards / example counts)."""
    path = rlds.resolve_dataset_dir(data_dir)
    return hashlib.sha256((path / rlds.DATASET_INFO).read_bytes()).hexdigest()


def _accumulate_norm_stats(path, state_acc, action_acc) -> None:
    """Feeds every episode's states and actions of the RLDS dataset at `path` (images not
    decoded) into the two accumulators."""
    episodes = rlds.load_rlds_episodes(path, decode_images=False)
    episodes = episodes.map(
        lambda tr: (tr[schema.RLDS_OBSERVATION][schema.RLDS_STATE], tr[schema.RLDS_ACTION])
    )
    for state, action in episodes.as_numpy_iterator():
        state_acc.update(state.reshape(state.shape[0], -1))
        action_acc.update(action.reshape(action.shape[0], -1))


def compute_dataset_norm_stats(data_dir, cache: bool = True) -> dict:
    """Normalization stats of observation/state and action over a whole RLDS dataset.

    One streaming pass over the episodes (images are not decoded). With ``cache``, the
    result is stored as ``<dataset dir>/action_gen_norm_stats.json`` together with a
    fingerprint of dataset_info.json; a cache whose fingerprint no longer matches (the
    dataset was rewritten) is recomputed. A read-only dataset directory only loses the
    cache (with a warning).

    Returns:
      ``{"state": stats, "actions": stats, "_fingerprint": str}`` (see normalize.py).
    """
    path = rlds.resolve_dataset_dir(data_dir)
    fingerprint = dataset_fingerprint(path)
    cache_file = path / NORM_STATS_FILE
    if cache and cache_file.exists():
        try:
            stats = norm.load_norm_stats(cache_file)
        except ValueError as e:
            log.warning("ignoring unreadable norm stats cache: %s", e)
        else:
            if stats.get(_FINGERPRINT) == fingerprint:
                return stats
            log.info("norm stats cache %s is stale; recomputing", cache_file)

    state_acc = norm.NormStatsAccumulator()
    action_acc = norm.NormStatsAccumulator()
    _accumulate_norm_stats(path, state_acc, action_acc)
    stats = {
        norm.STATE: state_acc.finalize(),
        norm.ACTIONS: action_acc.finalize(),
        _FINGERPRINT: fingerprint,
    }
    if cache:
        try:
            norm.save_norm_stats(stats, cache_file)
        except OSError as e:
            log.warning("cannot cache norm stats in %s (%s); continuing without", path, e)
    return stats


def create_train_dataset(
    data_dir,
    *,
    obs_horizon: int,
    action_horizon: int,
    batch_size: int,
    norm_stats: Mapping,
    state_norm: str = "minmax",
    action_norm: str = "minmax",
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    split: str = "train",
    weights: Sequence[float] | None = None,
    image_crop: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """Infinite, deterministic stream of normalized training batches.

    Args:
      data_dir: RLDS dataset directory (see ``rlds.load_rlds_episodes``), or a list of
        them: a mixture, each window drawn from dataset i with probability
        ``weights[i] / sum(weights)`` (``tf.data.Dataset.sample_from_datasets``; every
        dataset repeats on its own, so a small one is revisited, not exhausted). All must
        have the same fields and shapes; ``norm_stats`` should cover all of them
        (``compute_mixture_norm_stats``).
      weights: per-dataset sampling weights of a mixture (default: equal).
      image_crop: (h, w) random crop of every camera's frames (``augment.py``; training
        only, the model center-crops at inference); None: frames as stored.
      obs_horizon: T, observations per window.
      action_horizon: H, actions per window.
      batch_size: B per process.
      norm_stats: ``{"state": ..., "actions": ...}`` (``compute_dataset_norm_stats``).
      state_norm, action_norm: normalization modes (``normalize.MODES``).
      shuffle_buffer: windows in the shuffle buffer.
      seed: seed of every shuffle.
      shard_index, num_shards: this process's share of the episodes.
      split: split (or TFDS slice) to read.

    Returns:
      Batches ``OBS_STATE`` [B, T, S] float32, ``OBS_PAD_MASK`` [B, T] bool, ``ACTIONS``
      [B, H, A] float32, ``ACTION_PAD_MASK`` [B, H] bool, ``PROMPT`` [B] string, and
      ``image_key(cam)`` [B, T, h, w, 3] uint8 per camera.
    """
    for mode in (state_norm, action_norm):
        if mode not in norm.MODES:
            raise ValueError(f"unknown normalization mode {mode!r}; expected one of {norm.MODES}")
    norm.validate_norm_stats(norm_stats, source="norm_stats")
    state_stats, action_stats = norm_stats[norm.STATE], norm_stats[norm.ACTIONS]

    data_dirs = [data_dir] if isinstance(data_dir, str | os.PathLike) else list(data_dir)
    if weights is not None and len(weights) != len(data_dirs):
        raise ValueError(f"{len(weights)} mixture weights for {len(data_dirs)} datasets")
    streams = []
    for i, path in enumerate(data_dirs):
        episodes = rlds.load_rlds_episodes(
            path, split=split, shard_index=shard_index, num_shards=num_shards
        )
        # Dataset 0 keeps the single-dataset seeds, so a one-element mixture is identical.
        base = seed + 1000 * i
        ds = episodes.shuffle(_EPISODE_SHUFFLE_BUFFER, seed=base, reshuffle_each_iteration=True)
        ds = ds.flat_map(lambda tr: windows.window_trajectory(tr, obs_horizon, action_horizon))
        ds = ds.shuffle(shuffle_buffer, seed=base + 1, reshuffle_each_iteration=True)
        streams.append(ds.repeat())
    ds = streams[0] if len(streams) == 1 else _mix(streams, data_dirs, weights, seed)
    ds = ds.batch(batch_size, drop_remainder=True)
    # The batch index seeds the crop offsets: the stream stays a function of the seed.
    ds = ds.enumerate()

    def normalize_batch(index, batch):
        batch = dict(batch)
        if image_crop:
            batch = augment.crop_batch_images(batch, image_crop, seed, index)
        batch[schema.OBS_STATE] = norm.normalize(batch[schema.OBS_STATE], state_stats, state_norm)
        batch[schema.ACTIONS] = norm.normalize(batch[schema.ACTIONS], action_stats, action_norm)
        return batch

    ds = ds.map(normalize_batch, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _mix(streams, data_dirs, weights, seed: int) -> tf.data.Dataset:
    """Weighted sampling of windows from several infinite streams (seeded)."""
    specs = [s.element_spec for s in streams]
    for path, spec in zip(data_dirs[1:], specs[1:], strict=True):
        if spec != specs[0]:
            raise ValueError(
                f"cannot mix RLDS datasets with different fields: {data_dirs[0]} gives "
                f"{specs[0]}, {path} gives {spec}"
            )
    weights = [1.0] * len(streams) if weights is None else [float(w) for w in weights]
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    return tf.data.Dataset.sample_from_datasets(
        streams, weights=[w / total for w in weights], seed=seed + 2
    )


def compute_mixture_norm_stats(data_dirs: Sequence) -> dict:
    """Normalization stats over the union of several RLDS datasets (one pass each, not
    cached), for a mixture: every dataset is normalized the same way."""
    state_acc = norm.NormStatsAccumulator()
    action_acc = norm.NormStatsAccumulator()
    for path in data_dirs:
        _accumulate_norm_stats(path, state_acc, action_acc)
    return {norm.STATE: state_acc.finalize(), norm.ACTIONS: action_acc.finalize()}


def iterate_numpy_batches(
    dataset: tf.data.Dataset, *, start_batch: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of ``dataset`` from batch ``start_batch`` on (exact resume).

    ``PROMPT`` comes back as a numpy object array of bytes [B].
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    if start_batch:
        dataset = dataset.skip(start_batch)
    return _reraise_data_loss(dataset.as_numpy_iterator())


def _reraise_data_loss(iterator):
    # The shard framing is checked when the dataset is opened (rlds._check_shards); a
    # record whose payload fails its CRC only shows up here, as a DataLossError whose
    # message is buried in a TF op trace.
    try:
        yield from iterator
    except tf.errors.DataLossError as e:
        raise ValueError(f"corrupt record in the RLDS data: {e.message}") from e


def norm_stats_path(data_dir) -> str:
    """Where ``compute_dataset_norm_stats`` caches the stats of ``data_dir``."""
    return os.fspath(rlds.resolve_dataset_dir(data_dir) / NORM_STATS_FILE)
