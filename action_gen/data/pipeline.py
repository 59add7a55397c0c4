"""The training input stream: RLDS episodes -> windows -> shuffled batches, in the robot's units.

Per dataset (this process's share of its episodes), the stream is a sequence of *blocks*:

    block j = the episodes at positions [jE, (j+1)E) of the infinite episode sequence
              (epoch e = a seeded permutation of all N episodes, stateless in (seed, e));
              E = min(N, max(`episodes_per_block`, the episodes the shuffle buffer holds)),
              so a dataset that fits the buffer is one block per epoch (a global shuffle)
      -> read by byte offset (rlds.episode_index / read_episodes: no earlier episode read)
      -> standardized (data/standardize.py; foreign layouts only), filtered
      -> windows, one per step (windows.make_windows), padded to the run's state / action
         dims, tagged with the dataset's index
      -> shuffled (buffer `shuffle_buffer`, seed (seed, j)), repeated / cut to exactly M
         windows, M = round(E * mean episode length)

Several datasets are mixed window by window: in every run of Q consecutive windows
dataset d contributes exactly q_d = round(Q w_d / sum w) of them (largest remainder), in
an order permuted by (seed, run index). Then: batch (drop remainder) -> camera crop ->
prefetch. Each window carries `schema.DATASET_INDEX`; the run's transform pipeline
(data/transforms.py: robot conventions, delta actions, normalization with the window's own
dataset's stats, prompt, padding) runs on the host batches, as it does for a served policy.

Every position is a closed-form function of (seed, window index), so resuming at batch k
does not replay the stream: window n = k * B is block n // M at offset n % M (mixtures:
each dataset's window count at n, from the mixing permutation of one run of Q windows).
Only the current block's first n % M windows are recomputed. The resumed stream is the
uninterrupted one, bit for bit, at any k; its cost is one header read per episode (the
shard check already does it) plus at most one block per dataset, independent of k.
Not exact: a block in which every episode is filtered out (standardize's filters) yields
no windows, which shifts the later positions of that dataset's stream.
"""

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from action_gen import cli
from action_gen.data import augment, rlds, schema, sources, standardize, windows
from action_gen.data import normalize as norm

log = logging.getLogger(__name__)

NORM_STATS_FILE = "action_gen_norm_stats.json"
# Defaults of the block stream (module docstring): episodes per block E, and Q, the run of
# windows over which a mixture's quotas are exact.
EPISODES_PER_BLOCK = 64
MIXTURE_BLOCK = 1000


def dataset_fingerprint(data_dir) -> str:
    """sha256 of the dataset's dataset_info.json (changes with shards / example counts)."""
    path = rlds.resolve_dataset_dir(data_dir)
    return hashlib.sha256((path / rlds.DATASET_INFO).read_bytes()).hexdigest()


def _accumulate_norm_stats(path, state_acc, action_acc, mapping=None, rows=None):
    """Feeds every episode's states and actions of the RLDS dataset at `path` (images not
    decoded; standardized by `mapping` when given; through `rows(state, action) -> (state
    rows, action rows)` when given: the model-space rows of data/transforms.py) into the two
    accumulators; returns (episodes fed after the mapping's filters, their steps)."""
    episodes = rlds.load_rlds_episodes(path, decode_images=False)
    if mapping is not None:
        described = standardize.describe_features(rlds.load_builder(path).info.features)
        standardize.check_against_features(mapping, described, os.fspath(path), "dataset")
        fn, keep = standardize.make_standardizer(mapping, described, images=False)
        episodes = episodes.map(fn, num_parallel_calls=tf.data.AUTOTUNE).filter(keep)
    episodes = episodes.map(
        lambda tr: (tr[schema.RLDS_OBSERVATION][schema.RLDS_STATE], tr[schema.RLDS_ACTION])
    )
    count = steps = 0
    splits = rlds.load_builder(path).info.splits
    total = splits["train"].num_examples if "train" in splits else 0
    bar = cli.progress(total, f"norm stats {os.path.basename(os.fspath(path))}")
    for state, action in _reraise_data_loss(episodes.as_numpy_iterator()):
        bar.update(1)
        state = state.reshape(state.shape[0], -1)
        action = action.reshape(action.shape[0], -1)
        steps += len(action)
        if rows is not None:
            state, action = rows(state, action)
        state_acc.update(state)
        action_acc.update(action)
        count += 1
    return count, steps


def compute_dataset_norm_stats(
    data_dir, cache: bool = True, *, mapping=None, name=None, rows=None, rows_tag: str = ""
) -> dict:
    """Normalization stats of observation/state and action over a whole RLDS dataset.

    One streaming pass over the episodes (images are not decoded); with `mapping` (a
    foreign layout, data/standardize.py) over the standardized states and actions; with
    `rows` (`transforms.model_space_rows`: a robot's joint convention, delta actions) over
    what the model is fed before normalization, `rows_tag` naming it in the cache file. With
    ``cache``, the result is stored beside the dataset as ``action_gen_norm_stats.json``
    (``action_gen_norm_stats_<name>_<mapping hash>[_<rows_tag>].json`` for a mapping)
    together with a fingerprint of dataset_info.json; a cache whose fingerprint no longer
    matches (the dataset was rewritten) is recomputed. A read-only dataset directory only
    loses the cache (with a warning).

    Returns:
      ``{"state": stats, "actions": stats, "_fingerprint": str, "_episodes": int,
      "_steps": int}`` (see normalize.py; ``_episodes`` / ``_steps``: episodes kept and
      their steps, for the stream's block size).
    """
    path = rlds.resolve_dataset_dir(data_dir)
    fingerprint = dataset_fingerprint(path)
    cache_file = path / NORM_STATS_FILE
    if mapping is not None or rows_tag:
        slug = sources.task_slug(name or "mapped")
        digest = standardize.mapping_fingerprint(mapping) if mapping is not None else "native"
        tag = f"_{sources.task_slug(rows_tag)}" if rows_tag else ""
        cache_file = path / f"action_gen_norm_stats_{slug}_{digest}{tag}.json"
    if cache and cache_file.exists():
        try:
            stats = norm.load_norm_stats(cache_file)
        except ValueError as e:
            log.warning("ignoring unreadable norm stats cache: %s", e)
        else:
            if stats.get(norm.FINGERPRINT) == fingerprint:
                return stats
            log.info("norm stats cache %s is stale; recomputing", cache_file)

    state_acc = norm.NormStatsAccumulator()
    action_acc = norm.NormStatsAccumulator()
    episodes, steps = _accumulate_norm_stats(path, state_acc, action_acc, mapping, rows)
    if not episodes:
        raise ValueError(f"RLDS dataset {path}: no episode left after the mapping's filters")
    stats = {
        norm.STATE: state_acc.finalize(),
        norm.ACTIONS: action_acc.finalize(),
        norm.FINGERPRINT: fingerprint,
        norm.EPISODES: episodes,
        norm.STEPS: steps,
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
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    split: str = "train",
    weights: Sequence[float] | None = None,
    image_crop: Sequence[int] | None = None,
    mappings: Sequence[Mapping | None] | None = None,
    dataset_names: Sequence[str] | None = None,
    cameras: Mapping[str, Sequence[int]] | None = None,
    start_batch: int = 0,
    episodes_per_block: int = EPISODES_PER_BLOCK,
    mixture_block: int = MIXTURE_BLOCK,
) -> tf.data.Dataset:
    """Infinite, deterministic stream of training batches, not yet normalized (module
    docstring; `transforms.TransformPipeline.inputs` prepares them for the model).

    Args:
      data_dir: RLDS dataset directory (see ``rlds.load_rlds_episodes``), or a list of
        them: a mixture, with weights ``weights[i] / sum(weights)``.
      obs_horizon: T, observations per window.
      action_horizon: H, actions per window.
      batch_size: B per process.
      norm_stats: ``{"state": ..., "actions": ...}`` (``compute_dataset_norm_stats``), or
        with per-dataset stats under ``normalize.DATASETS`` (keyed by ``dataset_names``):
        the run's state / action dims and each dataset's own dims and mean episode length.
      shuffle_buffer: windows in the shuffle buffer (per block).
      seed: seed of every permutation and shuffle.
      shard_index, num_shards: this process's share of the episodes.
      split: split (or TFDS slice) to read ("train", "test", "val", "train[:90%]").
      weights: per-dataset sampling weights of a mixture (default: equal).
      image_crop: (h, w) random crop of every camera's frames (``augment.py``; training
        only, the model center-crops at inference); None: frames as stored.
      mappings: per dataset, a foreign layout's mapping (data/standardize.py) or None for
        our own layout. Mapped datasets have their state / action dims padded to the
        largest (``ACTION_DIM_MASK`` marks each window's real action dims when they
        differ) and their cameras put in the slots of ``cameras``.
      dataset_names: per dataset, its name (the key of its stats; error messages).
      cameras: {slot: (h, w)} the model's camera slots; images are resized (aspect kept,
        black padding) to it. A slot a dataset lacks is black with ``image_mask/<slot>``
        False (emitted whenever some dataset lacks a slot or masks one).
      start_batch: the first batch of the stream to produce (resume; no replay).
      episodes_per_block, mixture_block: E and Q of the module docstring.

    Returns:
      Batches ``OBS_STATE`` [B, T, S] float32, ``OBS_PAD_MASK`` [B, T] bool, ``ACTIONS``
      [B, H, A] float32 (raw: the dataset's units, a dataset's missing dims 0),
      ``ACTION_PAD_MASK`` [B, H] bool, ``PROMPT`` [B] string, ``DATASET_INDEX`` [B] int32,
      ``image_key(cam)`` [B, T, h, w, 3] uint8 per camera, optional
      ``image_mask_key(cam)`` [B] bool.
    """
    norm.validate_norm_stats(norm_stats, source="norm_stats")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    data_dirs = [data_dir] if isinstance(data_dir, str | os.PathLike) else list(data_dir)
    count = len(data_dirs)
    if weights is not None and len(weights) != count:
        raise ValueError(f"{len(weights)} mixture weights for {count} datasets")
    mappings = list(mappings) if mappings is not None else [None] * count
    names = list(dataset_names) if dataset_names else [os.fspath(d) for d in data_dirs]
    if len(mappings) != count or len(names) != count:
        raise ValueError(f"{len(mappings)} mappings / {len(names)} names for {count} datasets")

    # Per-dataset stats (each dataset's own dims), padded to the run's dims in tables.
    own = [
        norm.dataset_stats(norm_stats, n if norm.DATASETS in norm_stats else None) for n in names
    ]
    state_dim, action_dim = norm.feature_dims(norm_stats)
    for i, stats in enumerate(own):
        s, a = norm.feature_dims(stats)
        if s > state_dim or a > action_dim:
            raise ValueError(
                f"dataset {i} has (state, action) dims {(s, a)}, more than the run's "
                f"{(state_dim, action_dim)} (norm_stats' top-level dims)"
            )

    cameras = {str(k): tuple(int(x) for x in v) for k, v in (cameras or {}).items()}
    checked = [
        None if m is None else standardize.check_mapping(m, n)
        for m, n in zip(mappings, names, strict=True)
    ]
    masks_needed = any(
        m is not None and (set(cameras) - set(m["cameras"]) or m["camera_masks"]) for m in checked
    )
    mixing = _mixing_quotas(count, weights, mixture_block)
    starts = _mixture_counts(mixing, start_batch * batch_size, seed)
    streams = []
    for i, path in enumerate(data_dirs):
        index = rlds.episode_index(
            path, split=split, shard_index=shard_index, num_shards=num_shards
        )
        if not len(index):
            raise ValueError(
                f"RLDS dataset {index.path}: this process's share of {split!r} is empty"
            )
        to_windows = _window_fn(
            index,
            checked[i],
            names[i],
            i,
            cameras,
            masks_needed,
            obs_horizon,
            action_horizon,
            state_dim,
            action_dim,
        )
        total_episodes = own[i].get(norm.EPISODES) or norm_stats.get(norm.EPISODES)
        if not total_episodes:
            total_episodes = index.builder.info.splits[split.split("[")[0]].num_examples
        steps = (
            own[i].get(norm.STEPS) or norm_stats.get(norm.STEPS) or own[i][norm.ACTIONS]["count"]
        )
        mean_length = steps / max(1, int(total_episodes))
        streams.append(
            _block_stream(
                index,
                to_windows,
                seed=seed + 1000 * i,
                start_window=starts[i],
                episodes_per_block=episodes_per_block,
                mean_length=mean_length,
                shuffle_buffer=shuffle_buffer,
            )
        )
    _check_same_fields(streams, data_dirs)
    ds = streams[0] if count == 1 else _mix(streams, mixing, seed, start_batch * batch_size)
    ds = ds.batch(batch_size, drop_remainder=True)
    if image_crop:
        # The batch index seeds the crop offsets: the stream stays a function of the seed.
        ds = tf.data.Dataset.zip(tf.data.Dataset.range(start_batch, 2**62), ds)
        ds = ds.map(
            lambda index, batch: augment.crop_batch_images(batch, image_crop, seed, index),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _window_fn(
    index,
    mapping,
    name,
    which,
    cameras,
    masks_needed,
    obs_horizon,
    action_horizon,
    state_dim,
    action_dim,
):
    """trajectory (as read) -> dataset of its windows, in the run's common element spec."""
    standardizer = keep = None
    if mapping is not None:
        described = standardize.describe_features(index.builder.info.features)
        standardize.check_against_features(mapping, described, index.path, name)
        standardizer, keep = standardize.make_standardizer(
            mapping, described, cameras=cameras or None, image_masks=masks_needed
        )
    slots = sorted(cameras) if mapping is not None else []

    def to_windows(traj):
        observation = dict(traj[schema.RLDS_OBSERVATION])
        state = tf.cast(observation[schema.RLDS_STATE], tf.float32)
        state = tf.reshape(state, [tf.shape(state)[0], -1])
        observation[schema.RLDS_STATE] = _pad_last(state, state_dim)
        action = tf.cast(traj[schema.RLDS_ACTION], tf.float32)
        action = _pad_last(tf.reshape(action, [tf.shape(action)[0], -1]), action_dim)
        traj = dict(traj, **{schema.RLDS_OBSERVATION: observation, schema.RLDS_ACTION: action})
        out = windows.make_windows(traj, obs_horizon, action_horizon)
        length = tf.shape(action)[0]
        out[schema.DATASET_INDEX] = tf.fill([length], tf.constant(which, tf.int32))
        if masks_needed:
            for slot in slots:
                out[schema.image_mask_key(slot)] = traj["image_mask"][slot]
        return tf.data.Dataset.from_tensor_slices(out)

    def episodes(ds):
        if standardizer is not None:
            ds = ds.map(standardizer, num_parallel_calls=2, deterministic=True).filter(keep)
        return ds.flat_map(to_windows)

    return episodes


def _pad_last(x, dim: int):
    """[L, d] -> [L, dim] zero-padded (d <= dim)."""
    return tf.ensure_shape(tf.pad(x, [[0, 0], [0, dim - tf.shape(x)[-1]]]), [None, dim])


def _block_stream(
    index,
    episodes_to_windows,
    *,
    seed,
    start_window,
    episodes_per_block,
    mean_length,
    shuffle_buffer,
) -> tf.data.Dataset:
    """One dataset's infinite window stream from window `start_window` on (docstring)."""
    num = len(index)
    # A block is the unit of shuffling: it holds as many episodes as the shuffle buffer has
    # room for (at least `episodes_per_block`), so a dataset that fits the buffer is shuffled
    # as a whole every epoch, as a global shuffle would; blocks of fewer episodes than that
    # would restrict every run of consecutive batches to a subset of the episodes.
    fit = int(shuffle_buffer // max(mean_length, 1.0))
    per_block = min(max(int(episodes_per_block), fit), num)
    windows_per_block = max(1, int(round(per_block * mean_length)))
    first_block, offset = divmod(int(start_window), windows_per_block)

    def block(j):
        positions = tf.range(j * per_block, (j + 1) * per_block, dtype=tf.int64)
        epoch0 = (j * per_block) // num
        ids = tf.range(num, dtype=tf.int64)
        perm0 = tf.random.experimental.stateless_shuffle(ids, seed=tf.stack([seed, epoch0]))
        perm1 = tf.random.experimental.stateless_shuffle(ids, seed=tf.stack([seed, epoch0 + 1]))
        episode_ids = tf.where(
            positions // num == epoch0,
            tf.gather(perm0, positions % num),
            tf.gather(perm1, positions % num),
        )
        eps = rlds.read_episodes(index, tf.data.Dataset.from_tensor_slices(episode_ids))
        win = episodes_to_windows(eps)
        win = win.shuffle(shuffle_buffer, seed=seed * 1_000_003 + j, reshuffle_each_iteration=False)
        win = win.repeat().take(windows_per_block)
        return win.skip(tf.where(j == first_block, tf.constant(offset, tf.int64), 0))

    return tf.data.Dataset.range(first_block, 2**62).interleave(
        block,
        cycle_length=2,  # the next block is read while this one is consumed
        block_length=windows_per_block,
        num_parallel_calls=2,
        deterministic=True,
    )


def _mixing_quotas(count: int, weights, mixture_block: int) -> np.ndarray:
    """q [D] int: windows of each dataset per run of Q = sum(q) windows (largest remainder)."""
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
    if count == 1:
        return np.ones(1, np.int64)
    exact = np.asarray(weights) / sum(weights) * mixture_block
    quotas = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[: mixture_block - quotas.sum()]] += 1
    return quotas


def _mixing_order(quotas: np.ndarray, seed: int, run):
    """The dataset index of each window in mixing run `run` [Q] int64 (stateless)."""
    base = tf.constant(np.repeat(np.arange(len(quotas)), quotas), tf.int64)
    return tf.random.experimental.stateless_shuffle(
        base, seed=tf.stack([tf.constant(seed + 2, tf.int64), tf.cast(run, tf.int64)])
    )


def _mixture_counts(quotas: np.ndarray, start: int, seed: int) -> list[int]:
    """Windows each dataset has given to the mixture before global window `start`."""
    if len(quotas) == 1:
        return [int(start)]
    run, offset = divmod(int(start), int(quotas.sum()))
    head = _mixing_order(quotas, seed, run).numpy()[:offset]
    return [int(run * q + np.sum(head == d)) for d, q in enumerate(quotas)]


def _mix(streams, quotas, seed: int, start: int) -> tf.data.Dataset:
    """The windows of `streams` in the mixing order, from global window `start` on."""
    run, offset = divmod(int(start), int(quotas.sum()))
    choice = tf.data.Dataset.range(run, 2**62).flat_map(
        lambda r: tf.data.Dataset.from_tensor_slices(_mixing_order(quotas, seed, r))
    )
    return tf.data.Dataset.choose_from_datasets(streams, choice.skip(offset))


def _check_same_fields(streams, data_dirs) -> None:
    specs = [s.element_spec for s in streams]
    for path, spec in zip(data_dirs[1:], specs[1:], strict=True):
        if spec != specs[0]:
            raise ValueError(
                f"cannot mix RLDS datasets with different fields: {data_dirs[0]} gives "
                f"{specs[0]}, {path} gives {spec} (foreign layouts: give each a mapping, "
                "data.dataset_names, so they are standardized into the same slots)"
            )


def compute_mixture_norm_stats(data_dirs: Sequence) -> dict:
    """Normalization stats over the union of several RLDS datasets (one pass each, not
    cached), for a mixture of one layout: every dataset is normalized the same way."""
    state_acc = norm.NormStatsAccumulator()
    action_acc = norm.NormStatsAccumulator()
    counts = [_accumulate_norm_stats(path, state_acc, action_acc) for path in data_dirs]
    return {
        norm.STATE: state_acc.finalize(),
        norm.ACTIONS: action_acc.finalize(),
        norm.EPISODES: sum(c[0] for c in counts),
        norm.STEPS: sum(c[1] for c in counts),
    }


def iterate_numpy_batches(
    dataset: tf.data.Dataset, *, start_batch: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of ``dataset`` from batch ``start_batch`` on, by replay (k batches
    recomputed; the trainer instead builds the stream at its position with
    ``create_train_dataset(start_batch=k)``, which costs the same at any k).

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
