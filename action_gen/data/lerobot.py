"""LeRobot datasets (codebase v3.0 and v2.1) -> our RLDS layout, by a one-time conversion.

A LeRobot dataset directory (what ``huggingface_hub.snapshot_download`` of a
``lerobot/...`` dataset gives) holds::

    meta/info.json          codebase_version, fps, features {key: {dtype, shape, names,
                            info}}, path templates data_path / video_path, chunks_size
    v3.0  meta/tasks.parquet              task_index | task (pandas index column)
          meta/episodes/chunk-*/file-*.parquet   one row per episode: episode_index,
                            tasks, length, data/chunk_index, data/file_index,
                            dataset_from_index, dataset_to_index, and per video key
                            videos/<key>/{chunk_index, file_index, from_timestamp,
                            to_timestamp}
          data/chunk-XXX/file-XXX.parquet        several episodes per file
          videos/<key>/chunk-XXX/file-XXX.mp4    several episodes per file (AV1); the
                            frame of an episode's row at ``timestamp`` is at
                            ``from_timestamp + timestamp`` in the file
    v2.1  meta/tasks.jsonl, meta/episodes.jsonl  ({task_index, task}, {episode_index,
                            tasks, length}), one parquet and one MP4 per episode:
          data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet
          videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4
                            with episode_chunk = episode_index // chunks_size

A data row is one frame: the non-video features (``observation.state``, ``action``,
float32 lists; features of dtype ``image`` as ``{bytes, path}`` structs holding PNG or
JPEG), ``timestamp`` (s, from 0 in each episode), ``frame_index``, ``episode_index``,
``index`` (global frame index) and ``task_index`` (row of the tasks table). Paths are
always built from info.json's templates, never assumed.

Verified against huggingface/lerobot at commit 7427f31801f944f5ec9ce53cda02862ce7d1638b
(2026-08-23; CODEBASE_VERSION "v3.0": src/lerobot/datasets/utils.py, dataset_metadata.py,
dataset_reader.py, dataset_writer.py, video_utils.py, io_utils.py,
scripts/convert_dataset_v21_to_v30.py) and tag v0.3.3 (CODEBASE_VERSION "v2.1":
src/lerobot/datasets/utils.py, lerobot_dataset.py).

Why a conversion and not a direct reader: the converted dataset is an ordinary RLDS
dataset in our native layout (``observation/state``, ``observation/image/<camera>``,
``action``, ``language_instruction``), so everything downstream is reused unchanged —
windowing, norm stats and their cache, the dataset fingerprint checked on resume, resume
itself, sharding across processes, the validator, mixtures — and the video is decoded
exactly once instead of once per epoch (AV1 decoding, seeking to a keyframe before every
sampled window, would dominate a training step on a CPU host). The cost is disk: frames
are stored PNG-encoded, several times the size of the AV1 stream.

Frames are matched to the parquet timestamps: a row at time t takes the decoded frame
whose presentation time is within ``fps_tolerance / fps`` of t (default half a frame
period, so the match is unique); timestamps must be increasing with a spacing of
1/fps (within the same tolerance) and the video's frame rate must equal info.json's fps.
Violations raise :class:`LeRobotFormatError` naming the file, episode and key.
"""

import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import re
from collections.abc import Iterator, Mapping

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from action_gen.data import schema

log = logging.getLogger(__name__)

INFO_PATH = "meta/info.json"
TASKS_PARQUET = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
LEGACY_TASKS = "meta/tasks.jsonl"
LEGACY_EPISODES = "meta/episodes.jsonl"

STATE_KEY = "observation.state"
ACTION_KEY = "action"
REWARD_KEY = "next.reward"
CAMERA_PREFIX = "observation.images."

# info.json keys every version needs; v2.x also needs chunks_size for its path template.
_REQUIRED_INFO = ("codebase_version", "fps", "features", "data_path")
# RLDS dataset version written by the conversion.
RLDS_VERSION = "1.0.0"
# Marker in dataset_info.json's description: which source a converted dataset came from.
_SOURCE_MARK = "lerobot-source-sha256:"
# Relative tolerance on the video's frame rate against info.json's fps.
_VIDEO_FPS_RTOL = 0.01


class LeRobotFormatError(ValueError):
    """A LeRobot dataset that does not follow the format (the message names file and key)."""


# ----------------------------------------------------------------------------- metadata


@dataclasses.dataclass(frozen=True)
class LeRobotInfo:
    """What meta/info.json says, checked.

    Attributes:
      root: the dataset directory.
      version: "v3.0" or "v2.1" (codebase_version; "v2.0" reads as v2.1, same layout).
      fps: frames per second of every stream.
      features: info.json's feature dict {key: {"dtype", "shape", ...}}.
      data_path, video_path: path templates (video_path None without video features).
      chunks_size: files (v3.0) or episodes (v2.x) per chunk directory.
      cameras: camera name -> feature key, for every ``image`` / ``video`` feature, in
        info.json order; the name is the part after ``observation.images.``.
      robot_type: info.json's robot_type ("" when absent).
    """

    root: pathlib.Path
    version: str
    fps: float
    features: dict
    data_path: str
    video_path: str | None
    chunks_size: int
    cameras: dict
    robot_type: str

    @property
    def legacy(self) -> bool:
        """True for the v2.x layout (one parquet and one MP4 per episode)."""
        return self.version.startswith("v2")

    def is_video(self, camera: str) -> bool:
        return self.features[self.cameras[camera]]["dtype"] == "video"


def is_lerobot_dataset(path) -> bool:
    """Whether ``path`` looks like a LeRobot dataset directory (has meta/info.json)."""
    return (pathlib.Path(path) / INFO_PATH).is_file()


def camera_name(feature_key: str) -> str:
    """Our camera name of a LeRobot image/video feature key.

    ``observation.images.cam_high`` -> ``cam_high``; other keys (``observation.image``
    in pusht) lose the ``observation.`` prefix; remaining dots become underscores.
    """
    if feature_key.startswith(CAMERA_PREFIX):
        name = feature_key[len(CAMERA_PREFIX) :]
    else:
        name = feature_key.removeprefix("observation.")
    return name.replace(".", "_").replace("/", "_")


def read_lerobot_info(src_dir) -> LeRobotInfo:
    """Reads and checks ``<src_dir>/meta/info.json``.

    Raises:
      FileNotFoundError: no info.json.
      LeRobotFormatError: a missing or malformed key (named), an unsupported
        codebase_version, or no ``action`` / ``observation.state`` feature.
    """
    root = pathlib.Path(src_dir)
    path = root / INFO_PATH
    if not path.is_file():
        raise FileNotFoundError(f"not a LeRobot dataset: {path} does not exist")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeRobotFormatError(f"{path} is not valid JSON: {e}") from None
    for key in _REQUIRED_INFO:
        if key not in info:
            raise LeRobotFormatError(f"{path}: missing key {key!r}")
    version = str(info["codebase_version"])
    if re.fullmatch(r"v3\.\d+", version):
        normalized = "v3.0"
    elif version in ("v2.0", "v2.1"):
        normalized = "v2.1"
    else:
        raise LeRobotFormatError(
            f"{path}: codebase_version {version!r} is not supported (v3.0 and v2.1 are)"
        )
    try:
        fps = float(info["fps"])
    except (TypeError, ValueError):
        raise LeRobotFormatError(f"{path}: 'fps' must be a number, got {info['fps']!r}") from None
    if not fps > 0:
        raise LeRobotFormatError(f"{path}: 'fps' must be positive, got {info['fps']!r}")
    features = info["features"]
    if not isinstance(features, Mapping):
        raise LeRobotFormatError(f"{path}: 'features' must be a dict")
    for key, feature in features.items():
        if not isinstance(feature, Mapping) or "dtype" not in feature:
            raise LeRobotFormatError(f"{path}: features[{key!r}] has no 'dtype'")
    for key in (STATE_KEY, ACTION_KEY):
        if key not in features:
            raise LeRobotFormatError(
                f"{path}: no {key!r} feature (features: {sorted(features)}); the conversion "
                f"maps {STATE_KEY!r} to observation/state and {ACTION_KEY!r} to action"
            )
    cameras = {}
    for key, feature in features.items():
        if feature["dtype"] in ("image", "video"):
            name = camera_name(key)
            if name in cameras:
                raise LeRobotFormatError(
                    f"{path}: features {cameras[name]!r} and {key!r} map to one camera {name!r}"
                )
            cameras[name] = key
    has_video = any(features[k]["dtype"] == "video" for k in cameras.values())
    if has_video and not info.get("video_path"):
        raise LeRobotFormatError(f"{path}: missing key 'video_path' (there are video features)")
    if normalized == "v2.1" and "chunks_size" not in info:
        raise LeRobotFormatError(f"{path}: missing key 'chunks_size' (needed by {version} paths)")
    return LeRobotInfo(
        root=root,
        version=normalized,
        fps=fps,
        features=dict(features),
        data_path=str(info["data_path"]),
        video_path=info.get("video_path") or None,
        chunks_size=int(info.get("chunks_size", 1000)),
        cameras=cameras,
        robot_type=str(info.get("robot_type") or ""),
    )


@dataclasses.dataclass(frozen=True)
class _Episode:
    """One episode's location: data file (+ row range for v3.0) and per-camera video."""

    index: int
    length: int
    tasks: tuple
    data_file: pathlib.Path
    # camera -> (mp4 path, from_timestamp s, to_timestamp s or None)
    videos: dict
    # v3.0: the episode's global frame indices [from, to) (the data rows' "index").
    frame_range: tuple | None = None


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"LeRobot dataset is missing {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LeRobotFormatError(f"{path}:{n}: invalid JSON: {e}") from None
    return rows


def read_tasks(info: LeRobotInfo) -> dict[int, str]:
    """task_index -> task string (v3.0 meta/tasks.parquet, v2.1 meta/tasks.jsonl)."""
    if info.legacy:
        path = info.root / LEGACY_TASKS
        rows = _read_jsonl(path)
        try:
            return {int(r["task_index"]): str(r["task"]) for r in rows}
        except KeyError as e:
            raise LeRobotFormatError(f"{path}: a line has no key {e.args[0]!r}") from None
    path = info.root / TASKS_PARQUET
    if not path.is_file():
        raise FileNotFoundError(f"LeRobot dataset is missing {path}")
    table = pq.read_table(path)
    # Written by pandas with the task string as the index named "task"; an unnamed index
    # is stored as __index_level_0__.
    task_col = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if "task_index" not in table.column_names or task_col is None:
        raise LeRobotFormatError(
            f"{path}: expected columns 'task_index' and 'task', found {table.column_names}"
        )
    indices = table.column("task_index").to_pylist()
    tasks = table.column(task_col).to_pylist()
    return {int(i): str(t) for i, t in zip(indices, tasks, strict=True)}


def _v3_episode_rows(info: LeRobotInfo) -> list[dict]:
    files = sorted((info.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"LeRobot {info.version} dataset has no "
            f"{info.root / EPISODES_DIR}/chunk-*/file-*.parquet"
        )
    wanted = ["episode_index", "length", "tasks", "data/chunk_index", "data/file_index"]
    wanted += ["dataset_from_index", "dataset_to_index"]
    for key in info.cameras.values():
        if info.features[key]["dtype"] == "video":
            wanted += [f"videos/{key}/{f}" for f in ("chunk_index", "file_index")]
            wanted += [f"videos/{key}/{f}" for f in ("from_timestamp", "to_timestamp")]
    rows = []
    for file in files:
        names = pq.read_schema(file).names
        for key in wanted:
            if key not in names and key != "tasks":
                raise LeRobotFormatError(f"{file}: missing column {key!r}")
        table = pq.read_table(file, columns=[k for k in wanted if k in names])
        rows.extend(dict(r, _file=file) for r in table.to_pylist())
    return rows


def list_episodes(info: LeRobotInfo) -> list[_Episode]:
    """Every episode of the dataset, by episode_index, with its file locations."""
    if info.legacy:
        path = info.root / LEGACY_EPISODES
        rows = [dict(r, _file=path) for r in _read_jsonl(path)]
    else:
        rows = _v3_episode_rows(info)
    episodes = []
    for row in sorted(rows, key=lambda r: r.get("episode_index", -1)):
        file = row["_file"]
        for key in ("episode_index", "length"):
            if key not in row:
                raise LeRobotFormatError(f"{file}: an episode row has no key {key!r}")
        index = int(row["episode_index"])
        tasks = tuple(str(t) for t in (row.get("tasks") or ()))
        if info.legacy:
            chunk = index // info.chunks_size
            fmt = {"episode_chunk": chunk, "episode_index": index}
            data_file = info.root / _format(info.data_path, "data_path", **fmt)
            videos = {
                cam: (
                    info.root / _format(info.video_path, "video_path", video_key=key, **fmt),
                    0.0,
                    None,
                )
                for cam, key in info.cameras.items()
                if info.is_video(cam)
            }
        else:
            data_file = info.root / _format(
                info.data_path,
                "data_path",
                chunk_index=int(row["data/chunk_index"]),
                file_index=int(row["data/file_index"]),
            )
            videos = {}
            for cam, key in info.cameras.items():
                if not info.is_video(cam):
                    continue
                prefix = f"videos/{key}/"
                video = info.root / _format(
                    info.video_path,
                    "video_path",
                    video_key=key,
                    chunk_index=int(row[prefix + "chunk_index"]),
                    file_index=int(row[prefix + "file_index"]),
                )
                videos[cam] = (
                    video,
                    float(row[prefix + "from_timestamp"]),
                    float(row[prefix + "to_timestamp"]),
                )
        frame_range = None
        if "dataset_from_index" in row and "dataset_to_index" in row:
            frame_range = (int(row["dataset_from_index"]), int(row["dataset_to_index"]))
        episodes.append(_Episode(index, int(row["length"]), tasks, data_file, videos, frame_range))
    indices = [e.index for e in episodes]
    if len(set(indices)) != len(indices):
        raise LeRobotFormatError(f"{info.root}: duplicate episode_index in the episode metadata")
    return episodes


def _format(template: str, name: str, **fields) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise LeRobotFormatError(
            f"meta/info.json: {name} template {template!r} cannot be filled with "
            f"{sorted(fields)}: {type(e).__name__}: {e}"
        ) from None


# ----------------------------------------------------------------------------- data files


def _column_to_numpy(column: pa.ChunkedArray, key: str, file) -> np.ndarray:
    """A parquet column of fixed-length lists (or scalars) -> [N, D...] numpy."""
    array = column.combine_chunks()
    n = len(array)
    shape = []
    while (
        pa.types.is_list(array.type)
        or pa.types.is_large_list(array.type)
        or (pa.types.is_fixed_size_list(array.type))
    ):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise LeRobotFormatError(f"{file}: column {key!r} has rows of different lengths")
        shape.append(int(lengths[0]) if len(lengths) else 0)
        array = array.flatten()
    values = array.to_numpy(zero_copy_only=False)
    return values.reshape([n, *shape])


class _DataFiles:
    """Reads parquet data files, keeping the last one (a v3.0 file holds many episodes)."""

    def __init__(self, info: LeRobotInfo):
        self._info = info
        self._path = None
        self._table = None
        self._episode_col = None

    def rows(self, episode: _Episode) -> tuple[pa.Table, pathlib.Path]:
        """The episode's rows, in file order."""
        path = episode.data_file
        if path != self._path:
            if not path.is_file():
                raise FileNotFoundError(
                    f"LeRobot dataset is missing data file {path} (episode {episode.index})"
                )
            self._table = pq.read_table(path)
            self._path = path
            if "episode_index" in self._table.column_names:
                self._episode_col = _column_to_numpy(
                    self._table.column("episode_index"), "episode_index", path
                )
            else:
                self._episode_col = None
        if self._episode_col is None:
            if not self._info.legacy:
                raise LeRobotFormatError(f"{path}: missing column 'episode_index'")
            return self._table, path
        rows = np.flatnonzero(self._episode_col == episode.index)
        return self._table.take(pa.array(rows)), path


def _check_timestamps(ts: np.ndarray, fps: float, tol: float, where: str) -> None:
    """Timestamps [L] of one episode increase by 1/fps (within ``tol``) each frame."""
    period = 1.0 / fps
    if len(ts) == 0:
        return
    diffs = np.diff(ts)
    bad = np.flatnonzero(diffs <= 0)
    if bad.size:
        i = int(bad[0])
        raise LeRobotFormatError(
            f"{where}: timestamps are not increasing: frame {i} at {ts[i]:.6f} s, frame "
            f"{i + 1} at {ts[i + 1]:.6f} s"
        )
    bad = np.flatnonzero(np.abs(diffs - period) > tol)
    if bad.size:
        i = int(bad[0])
        raise LeRobotFormatError(
            f"{where}: timestamp gap between frame {i} ({ts[i]:.6f} s) and frame {i + 1} "
            f"({ts[i + 1]:.6f} s): {diffs[i]:.6f} s apart, expected 1/fps = {period:.6f} s "
            f"(tolerance {tol:.6f} s)"
        )


def _decode_image_cells(column: pa.ChunkedArray, key: str, info: LeRobotInfo, where: str):
    """Parquet image cells ({bytes, path} structs of PNG/JPEG) -> [L, h, w, 3] uint8."""
    from PIL import Image

    frames = []
    for i, cell in enumerate(column.to_pylist()):
        data = cell.get("bytes") if isinstance(cell, Mapping) else cell
        if data is None and isinstance(cell, Mapping) and cell.get("path"):
            file = info.root / cell["path"]
            if not file.is_file():
                raise LeRobotFormatError(f"{where}: {key!r} frame {i}: image file {file} missing")
            data = file.read_bytes()
        if data is None:
            raise LeRobotFormatError(f"{where}: {key!r} frame {i} holds no image")
        try:
            with Image.open(io.BytesIO(data)) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except Exception as e:  # PIL raises many types on bad data
            raise LeRobotFormatError(f"{where}: {key!r} frame {i}: cannot decode: {e}") from e
    return _stack_frames(frames, key, where)


def _stack_frames(frames: list, key: str, where: str) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise LeRobotFormatError(f"{where}: {key!r} frames of different sizes {sorted(shapes)}")
    return np.stack(frames)


# ----------------------------------------------------------------------------- video


class VideoReader:
    """Sequential frame access to one MP4 with PyAV, seeking only when needed.

    Successive requests for later times (the episodes of a v3.0 file, in order) continue
    decoding where the last one stopped; a request for an earlier time, or one more than
    ``_SEEK_AHEAD_S`` ahead, seeks to the keyframe before it.
    """

    _SEEK_AHEAD_S = 2.0

    def __init__(self, path: pathlib.Path, *, fps: float, key: str):
        if not path.is_file():
            raise FileNotFoundError(f"LeRobot dataset is missing video file {path} ({key!r})")
        self.path = path
        self._key = key
        try:
            self._container = av.open(os.fspath(path))
        except av.error.FFmpegError as e:
            raise LeRobotFormatError(f"{path}: cannot open video ({key!r}): {e}") from e
        if not self._container.streams.video:
            self._container.close()
            raise LeRobotFormatError(f"{path}: no video stream ({key!r})")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        if rate is not None and abs(float(rate) - fps) > _VIDEO_FPS_RTOL * fps:
            self._container.close()
            raise LeRobotFormatError(
                f"{path}: video frame rate {float(rate):.3f} fps does not match "
                f"meta/info.json fps {fps:g} ({key!r})"
            )
        self._frames = None  # the open decode generator
        self._pending = None  # a decoded frame not yet consumed: (time, frame)
        self._position = None  # time of the last frame taken from the generator

    def close(self) -> None:
        self._container.close()

    def _seek(self, t: float) -> None:
        offset = max(0, int((t - 1e-3) / self._stream.time_base))
        self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._pending = None

    def _next(self):
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        for frame in self._frames:
            if frame.pts is None:
                continue
            self._position = float(frame.pts * self._stream.time_base)
            return self._position, frame
        return None

    def read(self, times: np.ndarray, tol: float, where: str) -> np.ndarray:
        """Frames at ``times`` [N] (s, increasing) within ``tol`` -> [N, h, w, 3] uint8."""
        start = float(times[0]) - tol
        if (
            self._frames is None
            or self._position is None
            or start < self._position - tol
            or start > self._position + self._SEEK_AHEAD_S
        ):
            self._seek(start)
        out = []
        j = 0
        last = None
        while j < len(times):
            item = self._next()
            if item is None:
                break
            t, frame = item
            last = t
            if t < times[j] - tol:
                continue
            if t > times[j] + tol:
                self._pending = item
                raise LeRobotFormatError(
                    f"{where}: {self._key!r}: no frame within {tol:.6f} s of t={times[j]:.6f} s "
                    f"(frame {j}) in {self.path}; the next frame is at {t:.6f} s"
                )
            out.append(frame.to_ndarray(format="rgb24"))
            j += 1
        if j < len(times):
            end = "no frames" if last is None else f"its last frame at {last:.6f} s"
            raise LeRobotFormatError(
                f"{where}: {self._key!r}: {self.path} ends before t={times[j]:.6f} s "
                f"(frame {j} of {len(times)}; {end})"
            )
        return _stack_frames(out, self._key, where)


class _Videos:
    """One open VideoReader per camera, replaced when the episode's file changes."""

    def __init__(self, fps: float):
        self._fps = fps
        self._readers: dict[str, VideoReader] = {}

    def reader(self, camera: str, path: pathlib.Path, key: str) -> VideoReader:
        reader = self._readers.get(camera)
        if reader is None or reader.path != path:
            if reader is not None:
                reader.close()
            reader = self._readers[camera] = VideoReader(path, fps=self._fps, key=key)
        return reader

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


# ----------------------------------------------------------------------------- episodes


def iterate_lerobot_episodes(
    src_dir, *, fps_tolerance: float = 0.5, images: bool = True
) -> Iterator[dict]:
    """Episodes of a LeRobot dataset in our RLDS episode layout, by episode_index.

    Args:
      src_dir: the LeRobot dataset directory (holding meta/info.json).
      fps_tolerance: timestamp tolerance in frame periods: timestamps may deviate from
        1/fps spacing, and a video frame from its row's timestamp, by at most
        ``fps_tolerance / fps`` seconds (default 0.5: half a frame period).
      images: False: no camera is read (no video decoded; the episodes lack the
        ``image/<camera>`` keys), for a pass over states and actions only.

    Yields:
      ``{"observation": {"state": [L, S] float32, "image/<camera>": [L, h, w, 3] uint8},
      "action": [L, A] float32, "reward": [L] float32 (when ``next.reward`` exists),
      "language_instruction": [L] str (the row's task), "episode_metadata": {"source":
      str, "episode_index": int64, "fps": float32, "robot_type": str}}`` — what
      ``rlds.write_rlds_dataset`` takes.

    Raises:
      LeRobotFormatError / FileNotFoundError naming the file, episode and key.
    """
    if not 0 < fps_tolerance <= 0.5:
        raise ValueError(f"fps_tolerance must be in (0, 0.5] frame periods, got {fps_tolerance}")
    info = read_lerobot_info(src_dir)
    tasks = read_tasks(info)
    episodes = list_episodes(info)
    tol = fps_tolerance / info.fps
    data_files = _DataFiles(info)
    videos = _Videos(info.fps)
    try:
        for episode in episodes:
            yield _read_episode(info, episode, tasks, tol, data_files, videos, images)
    finally:
        videos.close()


def _read_episode(info, episode, tasks, tol, data_files, videos, images=True) -> dict:
    table, path = data_files.rows(episode)
    where = f"{path} episode {episode.index}"
    if table.num_rows != episode.length:
        raise LeRobotFormatError(
            f"{where}: {table.num_rows} rows, the episode metadata says length {episode.length}"
        )
    if table.num_rows == 0:
        raise LeRobotFormatError(f"{where}: the episode has no frames")
    columns = table.column_names

    def column(key, required=True):
        if key not in columns:
            if required:
                raise LeRobotFormatError(f"{where}: missing column {key!r}")
            return None
        return _column_to_numpy(table.column(key), key, path)

    if "frame_index" in columns:
        frame_index = column("frame_index").reshape(-1)
        if not np.array_equal(frame_index, np.arange(len(frame_index))):
            raise LeRobotFormatError(f"{where}: frame_index is not 0..{episode.length - 1}")
    if episode.frame_range is not None and "index" in columns:
        first, end = episode.frame_range
        if not np.array_equal(column("index").reshape(-1), np.arange(first, end)):
            raise LeRobotFormatError(
                f"{where}: column 'index' is not dataset_from_index..dataset_to_index "
                f"[{first}, {end}) of the episode metadata"
            )
    timestamps = column("timestamp").astype(np.float64).reshape(-1)
    _check_timestamps(timestamps, info.fps, tol, f"{where} key 'timestamp'")

    state = column(STATE_KEY).astype(np.float32)
    action = column(ACTION_KEY).astype(np.float32)
    observation = {schema.RLDS_STATE: state.reshape(len(state), -1)}
    for camera, key in info.cameras.items() if images else ():
        if info.is_video(camera):
            video, from_ts, to_ts = episode.videos[camera]
            times = from_ts + timestamps
            if to_ts is not None and times[-1] > to_ts + tol:
                raise LeRobotFormatError(
                    f"{where}: {key!r}: last timestamp {times[-1]:.6f} s in {video} is past the "
                    f"episode's to_timestamp {to_ts:.6f} s"
                )
            frames = videos.reader(camera, video, key).read(times, tol, f"{where} ({video})")
        else:
            if key not in columns:
                raise LeRobotFormatError(f"{where}: missing image column {key!r}")
            frames = _decode_image_cells(table.column(key), key, info, where)
        observation[f"image/{camera}"] = frames

    task_index = column("task_index", required=False)
    if task_index is not None:
        missing = sorted(set(task_index.reshape(-1).tolist()) - set(tasks))
        if missing:
            raise LeRobotFormatError(
                f"{where}: task_index {missing} not in the tasks table "
                f"({LEGACY_TASKS if info.legacy else TASKS_PARQUET})"
            )
        language = [tasks[int(i)] for i in task_index.reshape(-1)]
    else:
        language = [episode.tasks[0] if episode.tasks else ""] * episode.length

    out = {
        schema.RLDS_OBSERVATION: observation,
        schema.RLDS_ACTION: action.reshape(len(action), -1),
        schema.RLDS_LANGUAGE: language,
        "episode_metadata": {
            "source": os.fspath(info.root.resolve()),
            "episode_index": np.int64(episode.index),
            "fps": np.float32(info.fps),
            "robot_type": info.robot_type,
        },
    }
    reward = column(REWARD_KEY, required=False)
    if reward is not None:
        out["reward"] = reward.astype(np.float32).reshape(-1)
    return out


# ----------------------------------------------------------------------------- conversion


def source_fingerprint(src_dir) -> str:
    """sha256 over the dataset's metadata files (info.json, tasks, episode tables)."""
    root = pathlib.Path(src_dir)
    digest = hashlib.sha256()
    files = [root / INFO_PATH, root / TASKS_PARQUET, root / LEGACY_TASKS, root / LEGACY_EPISODES]
    files += sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    for file in files:
        if file.is_file():
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def default_dataset_name(src_dir) -> str:
    """RLDS dataset name of a converted LeRobot dataset: its directory name, as an
    identifier ('lerobot/aloha_sim-insertion' -> 'aloha_sim_insertion')."""
    name = re.sub(r"\W+", "_", pathlib.Path(src_dir).resolve().name).strip("_").lower()
    if not name or name[0].isdigit():
        name = "lerobot_" + name
    return name


class _Episodes:
    """Sized iterable (write_rlds_dataset shows progress when it knows the count)."""

    def __init__(self, src_dir, count: int, fps_tolerance: float):
        self._src, self._count, self._tol = src_dir, count, fps_tolerance

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        return iterate_lerobot_episodes(self._src, fps_tolerance=self._tol)


def convert_lerobot_dataset(
    src_dir,
    dst_dir,
    *,
    fps_tolerance: float = 0.5,
    name: str | None = None,
    image_encoding: str = "png",
) -> str:
    """Converts a LeRobot dataset (v3.0 or v2.1) into an RLDS dataset in our layout.

    ``observation.state`` -> ``observation/state``, each image/video feature
    ``observation.images.<camera>`` -> ``observation/image/<camera>`` (video decoded once
    with PyAV), ``action`` -> ``action``, the row's task -> ``language_instruction``, and
    episode metadata ``{source, episode_index, fps, robot_type}``. Idempotent: when
    ``dst_dir`` already holds the conversion of the same source (same metadata
    fingerprint), that dataset is returned without decoding anything.

    Args:
      src_dir: the LeRobot dataset directory (holding meta/info.json).
      dst_dir: root of the output; the dataset goes to ``<dst_dir>/<name>/1.0.0``.
      fps_tolerance: timestamp tolerance in frame periods (see
        ``iterate_lerobot_episodes``).
      name: RLDS dataset name (default: ``default_dataset_name(src_dir)``).
      image_encoding: how the RLDS stores frames: "png" keeps the decoded frames exactly
        (the conversion's cost is mostly PNG encoding: ~165 frames/s at 224^2 on 2 busy
        cores against ~1,500 frames/s of AV1 decoding); "jpeg" is several times faster
        to write and read and smaller, at a second lossy step.

    Returns:
      The RLDS dataset version directory (what ``rlds.load_builder``,
      ``rlds.resolve_dataset_dir`` and the training pipeline take).

    Raises:
      LeRobotFormatError / FileNotFoundError naming file, episode and key;
      FileExistsError when ``<dst_dir>/<name>/1.0.0`` holds a different dataset.
    """
    from action_gen.data import rlds  # TensorFlow only where RLDS is written

    info = read_lerobot_info(src_dir)
    name = name or default_dataset_name(src_dir)
    fingerprint = source_fingerprint(src_dir)
    final = pathlib.Path(dst_dir) / name / RLDS_VERSION
    if final.exists():
        existing = final / rlds.DATASET_INFO
        description = ""
        if existing.is_file():
            description = json.loads(existing.read_text()).get("description", "")
        if _SOURCE_MARK + fingerprint in description:
            log.info("%s already holds the conversion of %s", final, info.root)
            return os.fspath(final)
        raise FileExistsError(
            f"{final} exists and is not the conversion of {info.root} (its metadata "
            "fingerprint differs); remove it or pick another destination"
        )
    count = len(list_episodes(info))
    description = (
        f"LeRobot {info.version} dataset {info.root.resolve()} converted by "
        f"action_gen.data.convert_lerobot ({info.fps:g} fps, cameras "
        f"{sorted(info.cameras)}). {_SOURCE_MARK}{fingerprint}"
    )
    return rlds.write_rlds_dataset(
        _Episodes(src_dir, count, fps_tolerance),
        dst_dir,
        name=name,
        version=RLDS_VERSION,
        description=description,
        image_encoding=image_encoding,
    )
