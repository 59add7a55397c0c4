"""RLDS episodes on disk in TFDS format: write our demos, read any RLDS dataset by path.

On disk (one dataset version directory, what ``tfds.builder_from_directory`` accepts)::

    <data_dir>/<name>/<version>/
        dataset_info.json  features.json
        <name>-train.tfrecord-00000-of-0000N ...

One record per episode: ``{"steps": Dataset({observation: {...}, action, reward,
discount, is_first, is_last, is_terminal, language_instruction}), "episode_metadata":
{...}}``. Episode metadata sits under ``episode_metadata`` (the Open X-Embodiment
layout), not beside ``steps`` as ``tfds.rlds.rlds_base.build_info`` would put it.

The writer serializes episodes with the TFDS feature connectors, streams them into
fixed-size tfrecord shards and then writes the metadata with
``tfds.folder_dataset.write_metadata``. That keeps memory at one episode and avoids the
generic builder's extra shuffle-and-rewrite pass, while the result is a plain TFDS
dataset. Everything is written into a staging directory that is renamed into place at
the end, so a crash never leaves a directory that looks complete.
"""

import dataclasses
import json
import logging
import os
import re
import struct
import uuid
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from flax import traverse_util

from action_gen import cli
from action_gen.data import schema

# The data layer only runs on the host; keep TensorFlow from grabbing accelerator memory
# that jax needs. Fails harmlessly if TF already initialized its devices.
try:
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
    pass

log = logging.getLogger(__name__)

DATASET_INFO = "dataset_info.json"
FEATURES = "features.json"
EPISODE_METADATA = "episode_metadata"
# Extra step-level fields of an episode to write ({key: [L, ...] or a dict of them}), for
# layouts other than ours (DROID's action_dict, a second instruction).
STEP_FIELDS = "step_fields"
_SPLIT = "train"
_FILE_FORMAT = "tfrecord"
# Images are stored PNG-encoded by default (lossless, so a round trip is exact); "jpeg"
# (what Open X-Embodiment datasets hold) is smaller and lossy.
_IMAGE_ENCODING = "png"
# Episodes per writer above which a progress bar is shown.
_PROGRESS_MIN_EPISODES = 50


# ----------------------------------------------------------------------------- writing


def _tensor_feature(
    value: np.ndarray, *, per_step: bool, image_encoding: str = _IMAGE_ENCODING
) -> tfds.features.FeatureConnector:
    """Feature of one field; ``per_step`` strips the leading time axis L."""
    shape = value.shape[1:] if per_step else value.shape
    if value.dtype.kind in "US" or value.dtype == object:
        if shape:
            raise ValueError(f"only scalar strings are supported, got shape {shape}")
        return tfds.features.Text()
    if value.dtype == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3):
        return tfds.features.Image(shape=shape, encoding_format=image_encoding)
    if not shape:
        return tfds.features.Scalar(dtype=value.dtype)
    return tfds.features.Tensor(shape=shape, dtype=value.dtype)


def _feature_tree(value, *, per_step: bool) -> tfds.features.FeatureConnector:
    """`_tensor_feature`, or a FeaturesDict of them for a (nested) dict of arrays (the
    dict actions and extra step fields of other layouts)."""
    if isinstance(value, Mapping):
        return tfds.features.FeaturesDict(
            {k: _feature_tree(v, per_step=per_step) for k, v in value.items()}
        )
    return _tensor_feature(np.asarray(value), per_step=per_step)


def _first_leaf(value) -> np.ndarray:
    while isinstance(value, Mapping):
        value = next(iter(value.values()))
    return np.asarray(value)


def _infer_features(
    episode: Mapping, image_encoding: str = _IMAGE_ENCODING
) -> tfds.features.FeaturesDict:
    """TFDS feature spec of the RLDS record, from the shapes/dtypes of one episode."""
    observation = episode[schema.RLDS_OBSERVATION]
    if not isinstance(observation, Mapping):
        raise ValueError("episode['observation'] must be a dict of [L, ...] arrays")
    steps = {
        schema.RLDS_OBSERVATION: tfds.features.FeaturesDict(
            {
                k: _tensor_feature(np.asarray(v), per_step=True, image_encoding=image_encoding)
                for k, v in observation.items()
            }
        ),
        schema.RLDS_ACTION: _feature_tree(episode[schema.RLDS_ACTION], per_step=True),
        "reward": tfds.features.Scalar(dtype=np.float32),
        "discount": tfds.features.Scalar(dtype=np.float32),
        "is_first": tfds.features.Scalar(dtype=np.bool_),
        "is_last": tfds.features.Scalar(dtype=np.bool_),
        "is_terminal": tfds.features.Scalar(dtype=np.bool_),
        schema.RLDS_LANGUAGE: tfds.features.Text(),
    }
    for key, value in episode.get(STEP_FIELDS, {}).items():
        steps[key] = _feature_tree(value, per_step=True)
    features = {schema.RLDS_STEPS: tfds.features.Dataset(steps)}
    metadata = episode.get(EPISODE_METADATA)
    if metadata:
        features[EPISODE_METADATA] = tfds.features.FeaturesDict(
            {k: _tensor_feature(np.asarray(v), per_step=False) for k, v in metadata.items()}
        )
    return tfds.features.FeaturesDict(features)


def _to_record(episode: Mapping, index: int) -> dict:
    """Our episode dict -> the nested RLDS record the feature spec encodes."""
    action = episode[schema.RLDS_ACTION]
    action = (
        traverse_util.unflatten_dict(
            {k: np.asarray(v) for k, v in traverse_util.flatten_dict(action).items()}
        )
        if isinstance(action, Mapping)
        else np.asarray(action)
    )
    length = _first_leaf(action).shape[0]
    if length == 0:
        raise ValueError(f"episode {index} is empty")
    observation = {k: np.asarray(v) for k, v in episode[schema.RLDS_OBSERVATION].items()}
    for key, value in observation.items():
        if value.shape[0] != length:
            raise ValueError(
                f"episode {index}: observation[{key!r}] has {value.shape[0]} steps, "
                f"action has {length}"
            )
    reward = np.asarray(episode.get("reward", np.zeros(length)), np.float32)
    discount = np.asarray(episode.get("discount", np.ones(length)), np.float32)
    is_last = np.arange(length) == length - 1
    # A finished demonstration ends in a terminal state (the Open X-Embodiment
    # convention); datasets cut by a time limit pass their own is_terminal.
    is_terminal = np.asarray(episode.get("is_terminal", is_last), np.bool_)
    language = episode.get(schema.RLDS_LANGUAGE, "")
    if isinstance(language, str | bytes):
        language = [language] * length
    steps = {
        schema.RLDS_OBSERVATION: observation,
        schema.RLDS_ACTION: action,
        "reward": reward,
        "discount": discount,
        "is_first": np.arange(length) == 0,
        "is_last": is_last,
        "is_terminal": is_terminal,
        schema.RLDS_LANGUAGE: list(language),
    }
    steps.update(episode.get(STEP_FIELDS, {}))
    record = {schema.RLDS_STEPS: steps}
    if episode.get(EPISODE_METADATA):
        record[EPISODE_METADATA] = dict(episode[EPISODE_METADATA])
    return record


def write_rlds_dataset(
    episodes: Iterable[Mapping],
    data_dir: str | os.PathLike,
    *,
    name: str = "demos",
    version: str = "1.0.0",
    description: str = "",
    shard_size: int = 256,
    image_encoding: str = _IMAGE_ENCODING,
    split: str = _SPLIT,
) -> str:
    """Writes episodes as an RLDS dataset in TFDS format.

    Args:
      episodes: one dict per episode of length L: ``{"observation": {"state": [L, S],
        optional "image/<camera>": [L, h, w, 3] uint8, ...}, "action": [L, A],
        "reward": [L], "language_instruction": str}``, optional ``"discount"`` [L],
        ``"is_terminal"`` [L] (default: True at the last step) and
        ``"episode_metadata": {"seed": int, ...}``. The feature spec (shapes, dtypes) is
        inferred from the first episode; every episode must match it. Other layouts
        (the Open X-Embodiment ones) are written too: ``"action"`` may be a dict of
        [L, ...] parts of any dtype, and ``"step_fields"`` adds step-level fields.
      data_dir: root directory; the dataset goes to ``<data_dir>/<name>/<version>``.
      name: dataset name (also the shard file prefix).
      version: dataset version "x.y.z".
      description: stored in dataset_info.json.
      shard_size: episodes per tfrecord shard.
      image_encoding: "png" (lossless) or "jpeg" for the image fields.
      split: the split written ("train"; "val" / "test" for held-out data).

    Returns:
      The dataset directory ``<data_dir>/<name>/<version>``.

    Raises:
      FileExistsError: if that directory already holds a dataset.
      ValueError: on no episodes or an episode that does not match the first.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if image_encoding not in ("png", "jpeg"):
        raise ValueError(f"image_encoding must be 'png' or 'jpeg', got {image_encoding!r}")
    final_dir = epath.Path(data_dir) / name / version
    if final_dir.exists():
        raise FileExistsError(f"RLDS dataset directory already exists: {final_dir}")
    staging = final_dir.parent / f"{version}.incomplete-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        shard_lengths, num_bytes, features = _write_shards(
            episodes, staging, name, shard_size, image_encoding
        )
        template = tfds.core.ShardedFileTemplate(
            data_dir=staging, dataset_name=name, split=split, filetype_suffix=_FILE_FORMAT
        )
        for i in range(len(shard_lengths)):
            tmp = staging / f"shard-{i:05d}.tmp"
            tmp.rename(template.sharded_filepath(shard_index=i, num_shards=len(shard_lengths)))
        split = tfds.core.SplitInfo(
            name=split,
            shard_lengths=shard_lengths,
            num_bytes=num_bytes,
            filename_template=template,
        )
        tfds.folder_dataset.write_metadata(
            data_dir=staging,
            features=features,
            split_infos=[split],
            version=version,
            check_data=False,
            description=description or f"{name}: RLDS episodes written by action_gen.",
        )
        staging.rename(final_dir)
    except BaseException:
        staging.rmtree(missing_ok=True)
        raise
    return os.fspath(final_dir)


def _write_shards(episodes, out_dir: epath.Path, name: str, shard_size: int, image_encoding):
    """Streams serialized episodes into ``shard-XXXXX.tmp`` files (renamed by the caller)."""
    total = len(episodes) if hasattr(episodes, "__len__") else 0
    progress = cli.progress(
        total,
        f"writing {name} (episodes)",
        disable=not total or total < _PROGRESS_MIN_EPISODES,
    )
    features = None
    shard_lengths: list[int] = []
    num_bytes = 0
    writer = None
    try:
        for index, episode in enumerate(episodes):
            progress.update(1)
            if features is None:
                features = _infer_features(episode, image_encoding)
            record = _to_record(episode, index)
            try:
                serialized = features.serialize_example(record)
            except Exception as e:  # TFDS errors on shape / dtype mismatch name no episode
                raise ValueError(
                    f"episode {index} does not match the feature spec inferred from episode 0: {e}"
                ) from e
            if not shard_lengths or shard_lengths[-1] == shard_size:
                if writer is not None:
                    writer.close()
                path = out_dir / f"shard-{len(shard_lengths):05d}.tmp"
                writer = tf.io.TFRecordWriter(os.fspath(path))
                shard_lengths.append(0)
            writer.write(serialized)
            shard_lengths[-1] += 1
            num_bytes += len(serialized)
    finally:
        if writer is not None:
            writer.close()
        progress.close()
    if features is None:
        raise ValueError("write_rlds_dataset got no episodes")
    return shard_lengths, num_bytes, features


# ----------------------------------------------------------------------------- reading


def _version_key(path: epath.Path) -> tuple:
    """Sort key of a version directory name ("1.0.0" < "1.10.0"; non-numeric parts last)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", path.name))


def _versions_in(path: epath.Path) -> list[epath.Path]:
    """The version directories directly below `path` that hold a dataset, oldest first."""
    found = [v for v in path.iterdir() if v.is_dir() and (v / DATASET_INFO).exists()]
    return sorted(found, key=_version_key)


def resolve_dataset_dir(data_dir: str | os.PathLike) -> epath.Path:
    """The dataset version directory of ``data_dir``.

    A downloaded RLDS dataset is ``<data_dir>/<name>/<version>/``; accepted are the version
    directory itself (holding dataset_info.json), the ``<name>`` directory (its newest
    version is taken: "1.0.1" over "1.0.0", "0.1.10" over "0.1.9") or a parent holding
    exactly one ``<name>`` (again its newest version). The TFDS name inside may differ from
    the directory's (openvla's ``libero_10_no_noops/1.0.0`` holds ``liber_o10-*`` shards):
    it is read from dataset_info.json, never from the path.

    Raises:
      FileNotFoundError: naming the path when it or its dataset_info.json is missing.
      ValueError: when a parent directory holds more than one dataset name.
    """
    path = epath.Path(data_dir)
    if not path.exists():
        raise FileNotFoundError(f"RLDS dataset path does not exist: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"RLDS dataset path is not a directory: {path}")
    if (path / DATASET_INFO).exists():
        return path
    versions = _versions_in(path)
    if versions:  # `path` is a <name> directory
        if len(versions) > 1:
            log.info("%s holds versions %s; reading the newest", path, [v.name for v in versions])
        return versions[-1]
    names = {child: _versions_in(child) for child in path.iterdir() if child.is_dir()}
    names = {child: v for child, v in names.items() if v}
    if len(names) == 1:
        return next(iter(names.values()))[-1]
    if len(names) > 1:
        found = ", ".join(os.fspath(v[-1]) for v in sorted(names.values()))
        raise ValueError(f"{path} holds several RLDS datasets; pass one of: {found}")
    raise FileNotFoundError(
        f"no {DATASET_INFO} in {path} (nor in any <name>/<version> below it): "
        "not a TFDS/RLDS dataset directory"
    )


def load_builder(data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """``tfds.builder_from_directory`` with the metadata checked and errors made readable."""
    path = resolve_dataset_dir(data_dir)
    for filename in (DATASET_INFO, FEATURES):
        file = path / filename
        if not file.exists():
            raise FileNotFoundError(f"RLDS dataset {path} is missing {filename}")
        try:
            json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"RLDS metadata file {file} is not valid JSON: {e}") from None
    try:
        builder = tfds.builder_from_directory(path)
        features = builder.info.features
    except Exception as e:  # protobuf / feature-connector errors carry no path
        raise ValueError(f"cannot read RLDS metadata in {path}: {type(e).__name__}: {e}") from e
    _check_rlds_features(features, path)
    return builder


def _check_rlds_features(features, path: epath.Path) -> None:
    if schema.RLDS_STEPS not in features:
        raise ValueError(
            f"{path / FEATURES}: not an RLDS dataset, missing key {schema.RLDS_STEPS!r}"
        )
    steps = features[schema.RLDS_STEPS]
    if not isinstance(steps, tfds.features.Dataset):
        raise ValueError(f"{path / FEATURES}: {schema.RLDS_STEPS!r} is not a Dataset feature")
    for key in (schema.RLDS_OBSERVATION, schema.RLDS_ACTION, "is_first", "is_last"):
        if key not in steps.feature:
            raise ValueError(f"{path / FEATURES}: RLDS steps are missing key {key!r}")


def _record_offsets(file, path: epath.Path) -> list[tuple[int, int]]:
    """(payload offset, payload bytes) of every record of a tfrecord file.

    Walks the framing (8-byte length, 4-byte crc, payload, 4-byte crc) reading only the
    headers: one seek per episode, not a read of the data.

    Raises:
      FileNotFoundError / ValueError naming the file when it is missing or truncated.
    """
    if not file.exists():
        raise FileNotFoundError(f"RLDS dataset {path}: shard file missing: {file}")
    size = file.stat().length
    records, offset = [], 0
    with tf.io.gfile.GFile(os.fspath(file), "rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(8)
            if len(header) < 8:
                break
            length = struct.unpack("<Q", header)[0]
            records.append((offset + 12, length))
            offset += 8 + 4 + length + 4
    if offset != size:
        raise ValueError(
            f"RLDS shard {file} is truncated or corrupt: {size} bytes, but its record "
            f"framing ends at byte {offset} ({len(records)} records)"
        )
    return records


def _check_shards(builder, split: str, path: epath.Path) -> dict:
    """Fails early, naming the file, on a missing, truncated or miscounted shard.

    Returns {file path: its records' (payload offset, bytes)} (see `_record_offsets`).
    Payload corruption that keeps the framing intact still surfaces (as a TF
    DataLossError) when the records are read.
    """
    info = builder.info.splits[split]
    out = {}
    for file, expected in zip(info.filepaths, info.shard_lengths, strict=True):
        records = _record_offsets(file, path)
        if len(records) != expected:
            raise ValueError(
                f"RLDS shard {file} is truncated or corrupt: {file.stat().length} bytes holding "
                f"{len(records)} records by its framing, dataset_info.json says {expected}"
            )
        out[os.fspath(file)] = records
    return out


def _episode_to_trajectory(episode: dict) -> dict:
    """RLDS record (steps as a nested tf.data.Dataset) -> tensors batched over time."""
    # All steps in one batch: the element count fits in int32 for any real episode.
    steps = episode[schema.RLDS_STEPS].batch(2**31 - 1).get_single_element()
    return _trajectory_of_steps(dict(episode, **{schema.RLDS_STEPS: steps}))


def _trajectory_of_steps(episode: dict) -> dict:
    """An episode whose steps are a dict of [L, ...] tensors -> our trajectory layout."""
    steps = episode[schema.RLDS_STEPS]
    traj = dict(steps)
    # Nested observation dicts -> one level with "/"-joined keys ("image/wrist").
    traj[schema.RLDS_OBSERVATION] = traverse_util.flatten_dict(
        dict(steps[schema.RLDS_OBSERVATION]), sep="/"
    )
    if schema.RLDS_LANGUAGE not in traj:
        # (the action may be a dict of parts: any part gives the length)
        length = tf.shape(tf.nest.flatten(traj[schema.RLDS_ACTION])[0])[0]
        traj[schema.RLDS_LANGUAGE] = tf.fill([length], "")
    metadata = {k: v for k, v in episode.items() if k != schema.RLDS_STEPS}
    if metadata:
        traj[EPISODE_METADATA] = metadata.get(EPISODE_METADATA, metadata)
    return traj


def _open_split(data_dir, split: str, shard_index: int, num_shards: int):
    """(builder, this process's split instruction, {file: record offsets}) with every
    check of `load_rlds_episodes` done."""
    builder = load_builder(data_dir)
    path = epath.Path(builder.data_dir)
    base_split = split.split("[")[0]
    if base_split not in builder.info.splits:
        raise ValueError(
            f"RLDS dataset {path} has no split {base_split!r} "
            f"(has {sorted(builder.info.splits.keys())})"
        )
    records = _check_shards(builder, base_split, path)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    num_episodes = builder.info.splits[split].num_examples
    if num_episodes < num_shards:
        raise ValueError(
            f"RLDS dataset {path} split {split!r} has {num_episodes} episodes, "
            f"fewer than num_shards={num_shards}"
        )
    if num_shards > 1:
        split = tfds.even_splits(split, n=num_shards)[shard_index]
    return builder, split, records


def load_rlds_episodes(
    data_dir: str | os.PathLike,
    *,
    split: str = "train",
    shard_index: int = 0,
    num_shards: int = 1,
    decode_images: bool = True,
) -> tf.data.Dataset:
    """Reads any RLDS dataset by path, one element per episode.

    Args:
      data_dir: a dataset version directory or a parent with one ``<name>/<version>``.
      split: a split name or TFDS slice ("train", "train[:90%]", "test", "val").
      shard_index: this process's shard (e.g. ``jax.process_index()``).
      num_shards: number of shards (e.g. ``jax.process_count()``); episodes are split
        into near-equal contiguous ranges, so processes read disjoint files.
      decode_images: if False, image fields stay as encoded bytes [L] (cheap passes that
        need only states and actions).

    Returns:
      A deterministic (file order) dataset of trajectories: ``{"observation": {"state":
      [L, S], "image/<camera>": [L, h, w, 3], ...}, "action": [L, A] (or a dict of [L, ...]
      parts, as stored), "reward": [L], "discount": [L], "is_first" / "is_last" /
      "is_terminal": [L] bool, "language_instruction": [L] string, optional
      "episode_metadata": {...}}``. Nested observation keys are joined with "/".

    Raises:
      FileNotFoundError / ValueError naming the path (and file or key) for a missing
      path, missing or corrupt metadata, missing or truncated shards, an unknown split
      or more shards than episodes.
    """
    builder, split, _ = _open_split(data_dir, split, shard_index, num_shards)
    decoders = None
    if not decode_images:
        decoders = _skip_image_decoding(builder.info.features)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders=decoders,
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    return ds.map(_episode_to_trajectory, num_parallel_calls=tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class EpisodeIndex:
    """Where each episode of one process's share of a split lies on disk (random access).

    Episode i (0 <= i < N, in the split's file order) is the tfrecord payload of
    ``length[i]`` bytes at byte ``offset[i]`` of ``files[file[i]]``, followed by
    ``footer[i]`` more bytes to the end of that file.
    """

    builder: tfds.core.DatasetBuilder
    files: tuple[str, ...]
    file: np.ndarray  # [N] int32
    offset: np.ndarray  # [N] int64
    length: np.ndarray  # [N] int64
    footer: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return int(self.file.shape[0])

    @property
    def path(self) -> str:
        return os.fspath(self.builder.data_dir)


def episode_index(
    data_dir: str | os.PathLike,
    *,
    split: str = "train",
    shard_index: int = 0,
    num_shards: int = 1,
) -> EpisodeIndex:
    """The byte location of every episode of this process's share of `split`.

    Costs one header read per episode (no payload is read), the same walk that checks the
    shards, so any episode can then be read on its own (`read_episodes`) without reading
    the ones before it: the input stream resumes without replay. Same arguments and
    errors as `load_rlds_episodes`; the episodes are the ones it would yield, in order.
    """
    builder, split, records = _open_split(data_dir, split, shard_index, num_shards)
    files, file_ids, offsets, lengths, footers = [], [], [], [], []
    for instruction in builder.info.splits[split].file_instructions:
        name = os.fspath(instruction.filename)
        if name not in records:  # the split's files are the base split's
            records[name] = _record_offsets(epath.Path(name), epath.Path(builder.data_dir))
        in_file = records[name]
        take = instruction.take if instruction.take >= 0 else len(in_file) - instruction.skip
        chosen = in_file[instruction.skip : instruction.skip + take]
        if not chosen:
            continue
        size = epath.Path(name).stat().length
        files.append(name)
        for offset, length in chosen:
            file_ids.append(len(files) - 1)
            offsets.append(offset)
            lengths.append(length)
            footers.append(size - offset - length)
    return EpisodeIndex(
        builder=builder,
        files=tuple(files),
        file=np.asarray(file_ids, np.int32),
        offset=np.asarray(offsets, np.int64),
        length=np.asarray(lengths, np.int64),
        footer=np.asarray(footers, np.int64),
    )


def read_episodes(
    index: EpisodeIndex,
    episode_ids: tf.data.Dataset,
    *,
    decode_images: bool = True,
    parallel_reads: int = 4,
) -> tf.data.Dataset:
    """The trajectories (as `load_rlds_episodes` gives them) of `episode_ids`, in order.

    Args:
      index: from `episode_index`.
      episode_ids: scalar int64 elements in [0, len(index)).
      decode_images: as for `load_rlds_episodes`.
      parallel_reads: episodes read and decoded concurrently (the order is kept).
    """
    files = tf.constant(list(index.files) or [""], tf.string)
    file = tf.constant(index.file, tf.int32)
    offset, length = tf.constant(index.offset), tf.constant(index.length)
    footer = tf.constant(index.footer)
    features = index.builder.info.features

    def read(i):
        # The one record of `length` bytes between `offset` and `footer`; the tfrecord
        # framing around it (length, crc) is skipped, as the shard check already read it.
        return tf.data.FixedLengthRecordDataset(
            files[file[i]], length[i], header_bytes=offset[i], footer_bytes=footer[i]
        )

    records = episode_ids.interleave(
        read, cycle_length=parallel_reads, num_parallel_calls=parallel_reads, deterministic=True
    )
    parser = features._example_parser  # noqa: SLF001 - TFDS's parser of this spec

    def decode(record):
        # Decodes the steps as batched tensors directly (no nested tf.data.Dataset, whose
        # batch-all-steps tf.data fuses into a preallocated 2^31-element batch here).
        parsed = parser.parse_example(record)
        episode = {
            key: _decode_batched(features[key].feature, value, decode_images)
            if key == schema.RLDS_STEPS
            else features[key].decode_example(value)
            for key, value in parsed.items()
        }
        return _trajectory_of_steps(episode)

    return records.map(decode, num_parallel_calls=parallel_reads, deterministic=True)


def _decode_batched(feature, data, decode_images: bool):
    """[L, ...] serialized step fields -> decoded [L, ...] tensors (images kept encoded
    unless `decode_images`)."""
    if isinstance(feature, tfds.features.FeaturesDict):
        return {k: _decode_batched(feature[k], data[k], decode_images) for k in feature.keys()}
    if isinstance(feature, tfds.features.Image) and not decode_images:
        return data
    return feature.decode_batch_example(data)


def _skip_image_decoding(features):
    """Decoders tree that leaves every Image feature encoded."""

    def walk(feature):
        if isinstance(feature, tfds.features.Image):
            return tfds.decode.SkipDecoding()
        if isinstance(feature, tfds.features.Dataset):
            return walk(feature.feature)
        if isinstance(feature, tfds.features.FeaturesDict):
            out = {k: walk(v) for k, v in feature.items()}
            return {k: v for k, v in out.items() if v is not None} or None
        return None

    return walk(features) or None
