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

import json
import logging
import os
import struct
import uuid
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from flax import traverse_util

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


def _infer_features(
    episode: Mapping, image_encoding: str = _IMAGE_ENCODING
) -> tfds.features.FeaturesDict:
    """TFDS feature spec of the RLDS record, from the shapes/dtypes of one episode."""
    observation = episode[schema.RLDS_OBSERVATION]
    if not isinstance(observation, Mapping):
        raise ValueError("episode['observation'] must be a dict of [L, ...] arrays")
    action = np.asarray(episode[schema.RLDS_ACTION])
    steps = {
        schema.RLDS_OBSERVATION: tfds.features.FeaturesDict(
            {
                k: _tensor_feature(np.asarray(v), per_step=True, image_encoding=image_encoding)
                for k, v in observation.items()
            }
        ),
        schema.RLDS_ACTION: _tensor_feature(action, per_step=True),
        "reward": tfds.features.Scalar(dtype=np.float32),
        "discount": tfds.features.Scalar(dtype=np.float32),
        "is_first": tfds.features.Scalar(dtype=np.bool_),
        "is_last": tfds.features.Scalar(dtype=np.bool_),
        "is_terminal": tfds.features.Scalar(dtype=np.bool_),
        schema.RLDS_LANGUAGE: tfds.features.Text(),
    }
    features = {schema.RLDS_STEPS: tfds.features.Dataset(steps)}
    metadata = episode.get(EPISODE_METADATA)
    if metadata:
        features[EPISODE_METADATA] = tfds.features.FeaturesDict(
            {k: _tensor_feature(np.asarray(v), per_step=False) for k, v in metadata.items()}
        )
    return tfds.features.FeaturesDict(features)


def _to_record(episode: Mapping, index: int) -> dict:
    """Our episode dict -> the nested RLDS record the feature spec encodes."""
    action = np.asarray(episode[schema.RLDS_ACTION])
    length = action.shape[0]
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
) -> str:
    """Writes episodes as an RLDS dataset in TFDS format.

    Args:
      episodes: one dict per episode of length L: ``{"observation": {"state": [L, S],
        optional "image/<camera>": [L, h, w, 3] uint8, ...}, "action": [L, A],
        "reward": [L], "language_instruction": str}``, optional ``"discount"`` [L],
        ``"is_terminal"`` [L] (default: True at the last step) and
        ``"episode_metadata": {"seed": int, ...}``. The feature spec (shapes, dtypes) is
        inferred from the first episode; every episode must match it.
      data_dir: root directory; the dataset goes to ``<data_dir>/<name>/<version>``.
      name: dataset name (also the shard file prefix).
      version: dataset version "x.y.z".
      description: stored in dataset_info.json.
      shard_size: episodes per tfrecord shard.
      image_encoding: "png" (lossless) or "jpeg" for the image fields.

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
            data_dir=staging, dataset_name=name, split=_SPLIT, filetype_suffix=_FILE_FORMAT
        )
        for i in range(len(shard_lengths)):
            tmp = staging / f"shard-{i:05d}.tmp"
            tmp.rename(template.sharded_filepath(shard_index=i, num_shards=len(shard_lengths)))
        split = tfds.core.SplitInfo(
            name=_SPLIT,
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
    from tqdm.auto import tqdm

    total = len(episodes) if hasattr(episodes, "__len__") else None
    progress = tqdm(
        episodes,
        total=total,
        desc=f"writing {name}",
        unit="episode",
        disable=total is not None and total < _PROGRESS_MIN_EPISODES,
    )
    features = None
    shard_lengths: list[int] = []
    num_bytes = 0
    writer = None
    try:
        for index, episode in enumerate(progress):
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


def resolve_dataset_dir(data_dir: str | os.PathLike) -> epath.Path:
    """The dataset version directory of ``data_dir``.

    Accepts the version directory itself (holding dataset_info.json) or a parent holding
    exactly one ``<name>/<version>`` dataset.

    Raises:
      FileNotFoundError: naming the path when it or its dataset_info.json is missing.
      ValueError: when a parent directory holds more than one dataset.
    """
    path = epath.Path(data_dir)
    if not path.exists():
        raise FileNotFoundError(f"RLDS dataset path does not exist: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"RLDS dataset path is not a directory: {path}")
    if (path / DATASET_INFO).exists():
        return path
    candidates = sorted(
        version
        for child in path.iterdir()
        if child.is_dir()
        for version in child.iterdir()
        if version.is_dir() and (version / DATASET_INFO).exists()
    )
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        found = ", ".join(os.fspath(c) for c in candidates)
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


def _check_shards(builder, split: str, path: epath.Path) -> None:
    """Fails early, naming the file, on a missing, truncated or miscounted shard.

    Walks the tfrecord framing (8-byte length, 4-byte crc, payload, 4-byte crc) reading
    only the headers, so the cost is one seek per episode, not a read of the data.
    Payload corruption that keeps the framing intact still surfaces (as a TF
    DataLossError) when the records are read.
    """
    info = builder.info.splits[split]
    for file, expected in zip(info.filepaths, info.shard_lengths, strict=True):
        if not file.exists():
            raise FileNotFoundError(f"RLDS dataset {path}: shard file missing: {file}")
        size = file.stat().length
        count, offset = 0, 0
        with tf.io.gfile.GFile(os.fspath(file), "rb") as f:
            while offset < size:
                f.seek(offset)
                header = f.read(8)
                if len(header) < 8:
                    break
                offset += 8 + 4 + struct.unpack("<Q", header)[0] + 4
                count += 1
        if offset != size or count != expected:
            raise ValueError(
                f"RLDS shard {file} is truncated or corrupt: {size} bytes holding "
                f"{count} records by its framing, dataset_info.json says {expected}"
            )


def _episode_to_trajectory(episode: dict) -> dict:
    """RLDS record (steps as a nested tf.data.Dataset) -> tensors batched over time."""
    # All steps in one batch: the element count fits in int32 for any real episode.
    steps = episode[schema.RLDS_STEPS].batch(2**31 - 1).get_single_element()
    traj = dict(steps)
    # Nested observation dicts -> one level with "/"-joined keys ("image/wrist").
    traj[schema.RLDS_OBSERVATION] = traverse_util.flatten_dict(
        dict(steps[schema.RLDS_OBSERVATION]), sep="/"
    )
    if schema.RLDS_LANGUAGE not in traj:
        length = tf.shape(traj[schema.RLDS_ACTION])[0]
        traj[schema.RLDS_LANGUAGE] = tf.fill([length], "")
    metadata = {k: v for k, v in episode.items() if k != schema.RLDS_STEPS}
    if metadata:
        traj[EPISODE_METADATA] = metadata.get(EPISODE_METADATA, metadata)
    return traj


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
      split: a split name or TFDS slice ("train", "train[:90%]").
      shard_index: this process's shard (e.g. ``jax.process_index()``).
      num_shards: number of shards (e.g. ``jax.process_count()``); episodes are split
        into near-equal contiguous ranges, so processes read disjoint files.
      decode_images: if False, image fields stay as encoded bytes [L] (cheap passes that
        need only states and actions).

    Returns:
      A deterministic (file order) dataset of trajectories: ``{"observation": {"state":
      [L, S], "image/<camera>": [L, h, w, 3], ...}, "action": [L, A], "reward": [L],
      "discount": [L], "is_first" / "is_last" / "is_terminal": [L] bool,
      "language_instruction": [L] string, optional "episode_metadata": {...}}``.

    Raises:
      FileNotFoundError / ValueError naming the path (and file or key) for a missing
      path, missing or corrupt metadata, missing or truncated shards, an unknown split
      or more shards than episodes.
    """
    builder = load_builder(data_dir)
    path = epath.Path(builder.data_dir)
    base_split = split.split("[")[0]
    if base_split not in builder.info.splits:
        raise ValueError(
            f"RLDS dataset {path} has no split {base_split!r} "
            f"(has {sorted(builder.info.splits.keys())})"
        )
    _check_shards(builder, base_split, path)
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
