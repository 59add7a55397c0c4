"""Writes episodes as a LeRobot dataset (codebase v3.0 or v2.1): export and test data.

Our episode dicts (what ``rlds.write_rlds_dataset`` takes) become the layout described in
``data/lerobot.py``, written the way LeRobot itself writes it (lerobot
datasets/dataset_writer.py, video_utils.py and scripts/convert_dataset_v21_to_v30.py at
the commit named there): data rows with timestamp = frame_index / fps, per-episode MP4s
encoded with yuv420p and a keyframe every 2 frames, and for v3.0 several episodes remuxed
(not re-encoded) into one file with each episode's from/to timestamps = the cumulative
stream durations. AV1 (libsvtav1) is used when the PyAV build has an AV1 encoder, as
LeRobot records; otherwise h264 or mpeg4.

Uses: share demos collected here in LeRobot's format, and write small real-format
datasets for tests and benchmarks (``convert_lerobot_dataset`` reads them back).
"""

import io
import itertools
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Mapping
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from action_gen.data import schema
from action_gen.data.lerobot import (
    ACTION_KEY,
    CAMERA_PREFIX,
    EPISODES_DIR,
    INFO_PATH,
    LEGACY_EPISODES,
    LEGACY_TASKS,
    STATE_KEY,
    TASKS_PARQUET,
)

# LeRobot's path templates (lerobot datasets/utils.py at the commits above).
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
_CHUNKS_SIZE = 1000
# Encoders in order of preference: LeRobot records AV1 (libsvtav1, g=2, crf=30).
_ENCODERS = (
    ("libsvtav1", "av1", {"g": "2", "crf": "30", "preset": "12"}),
    ("libaom-av1", "av1", {"g": "2", "crf": "30", "cpu-used": "8"}),
    ("libx264", "h264", {"g": "2", "crf": "23", "preset": "ultrafast"}),
    ("mpeg4", "mpeg4", {"g": "2", "qscale": "2"}),
)


def default_video_encoder() -> str:
    """The first of libsvtav1, libaom-av1, libx264, mpeg4 this PyAV build can encode."""
    for encoder, _, _ in _ENCODERS:
        if encoder in av.codecs_available:
            return encoder
    raise RuntimeError("PyAV has none of the encoders " + ", ".join(e for e, _, _ in _ENCODERS))


def encode_video(frames: np.ndarray, path, *, fps: float, encoder: str | None = None) -> None:
    """Writes frames [L, h, w, 3] uint8 as an MP4 (yuv420p, a keyframe every 2 frames)."""
    encoder = encoder or default_video_encoder()
    options = next((o for e, _, o in _ENCODERS if e == encoder), {})
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(os.fspath(path), "w") as out:
        stream = out.add_stream(encoder, rate=rate, options=dict(options))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def video_duration(path) -> float:
    """Duration (s) of an MP4's video stream, as LeRobot computes it (get_video_duration_in_s)."""
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration / av.time_base)


def concatenate_videos(paths: list, out_path) -> None:
    """Remuxes MP4s into one (no re-encoding; ffmpeg's concat demuxer), as LeRobot does."""
    with tempfile.NamedTemporaryFile("w", suffix=".ffconcat", delete=False) as listing:
        listing.write("ffconcat version 1.0\n")
        for path in paths:
            listing.write(f"file '{pathlib.Path(path).resolve()}'\n")
    try:
        with (
            av.open(listing.name, format="concat", options={"safe": "0"}) as src,
            av.open(os.fspath(out_path), "w", options={"movflags": "faststart"}) as dst,
        ):
            in_stream = src.streams.video[0]
            out_stream = dst.add_stream_from_template(template=in_stream, opaque=True)
            out_stream.time_base = in_stream.time_base
            for packet in src.demux(in_stream):
                if packet.dts is None:
                    continue
                packet.stream = out_stream
                dst.mux(packet)
    finally:
        os.unlink(listing.name)


def _frame_table(episode: Mapping, index: int, first_frame: int, task_index, image_cams, fps):
    """The parquet rows of one episode (LeRobot's column layout)."""
    observation = episode[schema.RLDS_OBSERVATION]
    state = np.asarray(observation[schema.RLDS_STATE], np.float32)
    action = np.asarray(episode[schema.RLDS_ACTION], np.float32)
    length = len(action)
    columns = {
        STATE_KEY: pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), state.shape[1]),
        ACTION_KEY: pa.FixedSizeListArray.from_arrays(
            pa.array(action.reshape(-1)), action.shape[1]
        ),
        "timestamp": pa.array(np.arange(length, dtype=np.float32) / np.float32(fps)),
        "frame_index": pa.array(np.arange(length, dtype=np.int64)),
        "episode_index": pa.array(np.full(length, index, np.int64)),
        "index": pa.array(np.arange(first_frame, first_frame + length, dtype=np.int64)),
        "task_index": pa.array(np.full(length, task_index, np.int64)),
    }
    if image_cams:
        from PIL import Image

        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        for camera in image_cams:
            cells = []
            for frame in observation[f"image/{camera}"]:
                buffer = io.BytesIO()
                Image.fromarray(np.asarray(frame)).save(buffer, format="PNG")
                cells.append({"bytes": buffer.getvalue(), "path": None})
            columns[CAMERA_PREFIX + camera] = pa.array(cells, type=image_type)
    return pa.table(columns)


def _write_tasks_parquet(tasks: list[str], path: pathlib.Path) -> None:
    """meta/tasks.parquet as pandas writes it: column task_index, index 'task'."""
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks)}
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
    }  # fmt: skip
    table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    pq.write_table(table, path)


def _task_of(episode: Mapping) -> str:
    """An episode's task: its instruction (a string, or the first step's)."""
    task = episode.get(schema.RLDS_LANGUAGE, "")
    if isinstance(task, bytes):
        return task.decode()
    return task if isinstance(task, str) else _task_of({schema.RLDS_LANGUAGE: task[0]})


def _feature_stats(values: np.ndarray) -> dict:
    flat = values.reshape(len(values), -1).astype(np.float64)
    return {
        "min": flat.min(0).tolist(),
        "max": flat.max(0).tolist(),
        "mean": flat.mean(0).tolist(),
        "std": flat.std(0).tolist(),
        "count": [len(flat)],
    }


def write_lerobot_dataset(
    episodes: Iterable[Mapping],
    root,
    *,
    fps: float,
    version: str = "v3.0",
    video_cameras=None,
    episodes_per_file: int = 3,
    encoder: str | None = None,
    robot_type: str = "",
) -> str:
    """Writes our episodes as a LeRobot dataset (the layout of the module docstring).

    Args:
      episodes: our episode dicts (as ``rlds.write_rlds_dataset`` takes):
        ``{"observation": {"state": [L, S], "image/<camera>": [L, h, w, 3] uint8},
        "action": [L, A], "language_instruction": str}``; any iterable, consumed once,
        one episode at a time (a generator keeps only the current episode's frames in
        memory: each is encoded as it arrives).
      root: the LeRobot dataset directory to create.
      fps: frame rate (timestamps are frame_index / fps).
      version: "v3.0" (several episodes per data/video file) or "v2.1" (one per episode).
      video_cameras: cameras stored as MP4 video (default: all); the others are stored as
        ``image`` features (PNG bytes in the parquet).
      episodes_per_file: v3.0 episodes per data and video file.
      encoder: PyAV encoder (default ``default_video_encoder()``: AV1 when available).
      robot_type: info.json's robot_type.

    Returns:
      ``root`` as a string.
    """
    if version not in ("v3.0", "v2.1"):
        raise ValueError(f"version must be 'v3.0' or 'v2.1', got {version!r}")
    episodes = iter(episodes)
    first = next(episodes, None)
    if first is None:
        raise ValueError("write_lerobot_dataset got no episodes")
    root = pathlib.Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=False)
    encoder = encoder or default_video_encoder()
    codec = next((c for e, c, _ in _ENCODERS if e == encoder), encoder)
    cameras = sorted(
        k.removeprefix("image/") for k in first[schema.RLDS_OBSERVATION] if k.startswith("image/")
    )
    video_cams = cameras if video_cameras is None else [c for c in cameras if c in video_cameras]
    image_cams = [c for c in cameras if c not in video_cams]

    state_dim = np.asarray(first[schema.RLDS_OBSERVATION][schema.RLDS_STATE]).shape[1]
    action_dim = np.asarray(first[schema.RLDS_ACTION]).shape[1]
    features = {
        STATE_KEY: {"dtype": "float32", "shape": [state_dim], "names": None},
        ACTION_KEY: {"dtype": "float32", "shape": [action_dim], "names": None},
    }
    for camera in cameras:
        h, w, c = np.asarray(first[schema.RLDS_OBSERVATION][f"image/{camera}"]).shape[1:]
        feature = {"shape": [h, w, c], "names": ["height", "width", "channels"]}
        if camera in video_cams:
            feature = {"dtype": "video", **feature}
            feature["info"] = {
                "video.height": h, "video.width": w, "video.codec": codec,
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                "video.channels": c, "has_audio": False,
            }  # fmt: skip
        else:
            feature = {"dtype": "image", **feature}
        features[CAMERA_PREFIX + camera] = feature
    for key in ("timestamp",):
        features[key] = {"dtype": "float32", "shape": [1], "names": None}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    if version == "v3.0":  # v3.0 records fps on every non-video feature
        for feature in features.values():
            if feature["dtype"] != "video":
                feature["fps"] = fps

    writer = (_V30Writer if version == "v3.0" else _V21Writer)(
        root, video_cams, image_cams, fps, encoder, episodes_per_file
    )
    # One pass: each episode's rows are built and its videos encoded as it arrives; only
    # lengths, tasks and the low-dim arrays (for stats.json) are kept.
    tasks, lengths, states, actions = [], [], [], []
    for index, episode in enumerate(itertools.chain([first], episodes)):
        task = _task_of(episode)
        if task not in tasks:  # task_index in order of first appearance
            tasks.append(task)
        start = sum(lengths)
        lengths.append(len(np.asarray(episode[schema.RLDS_ACTION])))
        states.append(np.asarray(episode[schema.RLDS_OBSERVATION][schema.RLDS_STATE]))
        actions.append(np.asarray(episode[schema.RLDS_ACTION]))
        rows = _frame_table(episode, index, start, tasks.index(task), image_cams, fps)
        writer.add(episode, rows, task)
    writer.finish(tasks)
    info = {
        "codebase_version": version,
        "robot_type": robot_type or None,
        "total_episodes": len(lengths),
        "total_frames": int(sum(lengths)),
        "total_tasks": len(tasks),
        "chunks_size": _CHUNKS_SIZE,
        "fps": fps,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": V30_DATA_PATH if version == "v3.0" else V21_DATA_PATH,
        "video_path": (V30_VIDEO_PATH if version == "v3.0" else V21_VIDEO_PATH)
        if video_cams
        else None,
        "features": features,
    }
    if version == "v3.0":
        info |= {"data_files_size_in_mb": 100, "video_files_size_in_mb": 200}
    else:
        info |= {"total_chunks": 1, "total_videos": len(lengths) * len(video_cams)}
    stats = {
        STATE_KEY: _feature_stats(np.concatenate(states)),
        ACTION_KEY: _feature_stats(np.concatenate(actions)),
    }
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
    return os.fspath(root)


class _V30Writer:
    """v3.0 files, written as episodes arrive: every `per_file` episodes one data parquet
    and, per video camera, one MP4 remuxed from the episodes' own encodings (kept in a
    temporary directory until their file is complete); the episode table at the end."""

    def __init__(self, root, video_cams, image_cams, fps, encoder, per_file):
        del image_cams  # stored in the rows
        self.root, self.video_cams, self.fps = root, video_cams, fps
        self.encoder, self.per_file = encoder, per_file
        self._parts_dir = tempfile.TemporaryDirectory()
        self._group: list[pa.Table] = []  # rows of the current file's episodes
        self._parts: dict[str, list[pathlib.Path]] = {c: [] for c in video_cams}
        self._offset = {c: 0.0 for c in video_cams}  # video time within the current file
        self._file_index = 0
        self._tasks: list[str] = []  # per episode
        self._lengths: list[int] = []
        self._video_meta: dict[str, list] = {}

    def add(self, episode: Mapping, rows: pa.Table, task: str) -> None:
        index = len(self._lengths)
        self._tasks.append(task)
        self._lengths.append(rows.num_rows)
        self._group.append(rows)
        for camera in self.video_cams:
            key = CAMERA_PREFIX + camera
            part = pathlib.Path(self._parts_dir.name) / f"{camera}_{index:06d}.mp4"
            frames = np.asarray(episode[schema.RLDS_OBSERVATION][f"image/{camera}"])
            encode_video(frames, part, fps=self.fps, encoder=self.encoder)
            duration = video_duration(part)
            meta = self._video_meta
            meta.setdefault(f"videos/{key}/chunk_index", []).append(0)
            meta.setdefault(f"videos/{key}/file_index", []).append(self._file_index)
            meta.setdefault(f"videos/{key}/from_timestamp", []).append(self._offset[camera])
            meta.setdefault(f"videos/{key}/to_timestamp", []).append(
                self._offset[camera] + duration
            )
            self._offset[camera] += duration
            self._parts[camera].append(part)
        if len(self._group) == self.per_file:
            self._flush()

    def _flush(self) -> None:
        if not self._group:
            return
        path = self.root / V30_DATA_PATH.format(chunk_index=0, file_index=self._file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(self._group), path)
        for camera in self.video_cams:
            out = self.root / V30_VIDEO_PATH.format(
                video_key=CAMERA_PREFIX + camera, chunk_index=0, file_index=self._file_index
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            concatenate_videos(self._parts[camera], out)
            for part in self._parts[camera]:
                part.unlink()
            self._parts[camera], self._offset[camera] = [], 0.0
        self._group = []
        self._file_index += 1

    def finish(self, tasks: list[str]) -> None:
        self._flush()
        self._parts_dir.cleanup()
        _write_tasks_parquet(tasks, self.root / TASKS_PARQUET)
        count = len(self._lengths)
        starts = np.concatenate([[0], np.cumsum(self._lengths)]).astype(int)
        file_index = [i // self.per_file for i in range(count)]
        meta = {
            "episode_index": list(range(count)),
            "tasks": [[t] for t in self._tasks],
            "length": self._lengths,
            "data/chunk_index": [0] * count,
            "data/file_index": file_index,
            "dataset_from_index": [int(s) for s in starts[:-1]],
            "dataset_to_index": [int(s) for s in starts[1:]],
        }
        meta |= self._video_meta
        meta["meta/episodes/chunk_index"] = [0] * count
        meta["meta/episodes/file_index"] = [0] * count
        path = self.root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(meta), path)


class _V21Writer:
    """v2.1 files, written as episodes arrive (one parquet and one MP4 per camera per
    episode); the tasks and episode tables at the end."""

    def __init__(self, root, video_cams, image_cams, fps, encoder, per_file):
        del image_cams, per_file
        self.root, self.video_cams, self.fps, self.encoder = root, video_cams, fps, encoder
        self._episodes: list[dict] = []

    def add(self, episode: Mapping, rows: pa.Table, task: str) -> None:
        i = len(self._episodes)
        self._episodes.append({"episode_index": i, "tasks": [task], "length": rows.num_rows})
        fmt = {"episode_chunk": i // _CHUNKS_SIZE, "episode_index": i}
        path = self.root / V21_DATA_PATH.format(**fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, path)
        for camera in self.video_cams:
            frames = np.asarray(episode[schema.RLDS_OBSERVATION][f"image/{camera}"])
            out = self.root / V21_VIDEO_PATH.format(video_key=CAMERA_PREFIX + camera, **fmt)
            encode_video(frames, out, fps=self.fps, encoder=self.encoder)

    def finish(self, tasks: list[str]) -> None:
        lines = [{"task_index": i, "task": t} for i, t in enumerate(tasks)]
        (self.root / LEGACY_TASKS).write_text("".join(json.dumps(x) + "\n" for x in lines))
        text = "".join(json.dumps(x) + "\n" for x in self._episodes)
        (self.root / LEGACY_EPISODES).write_text(text)
