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
import json
import os
import pathlib
import tempfile
from collections.abc import Mapping
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
    episodes: list[Mapping],
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
        "action": [L, A], "language_instruction": str}``.
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
    if not episodes:
        raise ValueError("write_lerobot_dataset got no episodes")
    root = pathlib.Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=False)
    encoder = encoder or default_video_encoder()
    codec = next((c for e, c, _ in _ENCODERS if e == encoder), encoder)
    first = episodes[0]
    cameras = sorted(
        k.removeprefix("image/") for k in first[schema.RLDS_OBSERVATION] if k.startswith("image/")
    )
    video_cams = cameras if video_cameras is None else [c for c in cameras if c in video_cameras]
    image_cams = [c for c in cameras if c not in video_cams]
    tasks = list(dict.fromkeys(_task_of(e) for e in episodes))

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

    lengths = [len(np.asarray(e[schema.RLDS_ACTION])) for e in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    info = {
        "codebase_version": version,
        "robot_type": robot_type or None,
        "total_episodes": len(episodes),
        "total_frames": int(starts[-1]),
        "total_tasks": len(tasks),
        "chunks_size": _CHUNKS_SIZE,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": V30_DATA_PATH if version == "v3.0" else V21_DATA_PATH,
        "video_path": (V30_VIDEO_PATH if version == "v3.0" else V21_VIDEO_PATH)
        if video_cams
        else None,
        "features": features,
    }
    rows = [
        _frame_table(e, i, int(starts[i]), tasks.index(_task_of(e)), image_cams, fps)
        for i, e in enumerate(episodes)
    ]
    if version == "v3.0":
        info |= {"data_files_size_in_mb": 100, "video_files_size_in_mb": 200}
        _write_v30(root, episodes, rows, lengths, starts, tasks, video_cams, fps,
                   encoder, episodes_per_file)  # fmt: skip
    else:
        info |= {"total_chunks": 1, "total_videos": len(episodes) * len(video_cams)}
        _write_v21(root, episodes, rows, lengths, tasks, video_cams, fps, encoder)
    stats = {
        STATE_KEY: _feature_stats(
            np.concatenate([e[schema.RLDS_OBSERVATION][schema.RLDS_STATE] for e in episodes])
        ),
        ACTION_KEY: _feature_stats(np.concatenate([e[schema.RLDS_ACTION] for e in episodes])),
    }
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
    return os.fspath(root)


def _write_v30(root, episodes, rows, lengths, starts, tasks, video_cams, fps, encoder,
               per_file):  # fmt: skip
    _write_tasks_parquet(tasks, root / TASKS_PARQUET)
    groups = [range(i, min(i + per_file, len(episodes))) for i in range(0, len(episodes), per_file)]
    meta = {
        "episode_index": list(range(len(episodes))),
        "tasks": [[_task_of(e)] for e in episodes],
        "length": lengths,
        "data/chunk_index": [0] * len(episodes),
        "data/file_index": [0] * len(episodes),
        "dataset_from_index": [int(s) for s in starts[:-1]],
        "dataset_to_index": [int(s) for s in starts[1:]],
    }
    for camera in video_cams:
        for field in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
            meta[f"videos/{CAMERA_PREFIX}{camera}/{field}"] = [0] * len(episodes)
    for file_index, group in enumerate(groups):
        path = root / V30_DATA_PATH.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables([rows[i] for i in group]), path)
        for i in group:
            meta["data/file_index"][i] = file_index
        for camera in video_cams:
            key = CAMERA_PREFIX + camera
            with tempfile.TemporaryDirectory() as tmp:
                parts, offset = [], 0.0
                for i in group:
                    part = pathlib.Path(tmp) / f"episode_{i:06d}.mp4"
                    frames = np.asarray(episodes[i][schema.RLDS_OBSERVATION][f"image/{camera}"])
                    encode_video(frames, part, fps=fps, encoder=encoder)
                    duration = video_duration(part)
                    meta[f"videos/{key}/file_index"][i] = file_index
                    meta[f"videos/{key}/from_timestamp"][i] = offset
                    meta[f"videos/{key}/to_timestamp"][i] = offset + duration
                    offset += duration
                    parts.append(part)
                out = root / V30_VIDEO_PATH.format(
                    video_key=key, chunk_index=0, file_index=file_index
                )
                out.parent.mkdir(parents=True, exist_ok=True)
                concatenate_videos(parts, out)
    meta["meta/episodes/chunk_index"] = [0] * len(episodes)
    meta["meta/episodes/file_index"] = [0] * len(episodes)
    path = root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(meta), path)


def _write_v21(root, episodes, rows, lengths, tasks, video_cams, fps, encoder):
    lines = [{"task_index": i, "task": t} for i, t in enumerate(tasks)]
    (root / LEGACY_TASKS).write_text("".join(json.dumps(x) + "\n" for x in lines))
    lines = [
        {"episode_index": i, "tasks": [_task_of(e)], "length": lengths[i]}
        for i, e in enumerate(episodes)
    ]
    (root / LEGACY_EPISODES).write_text("".join(json.dumps(x) + "\n" for x in lines))
    for i, episode in enumerate(episodes):
        fmt = {"episode_chunk": i // _CHUNKS_SIZE, "episode_index": i}
        path = root / V21_DATA_PATH.format(**fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows[i], path)
        for camera in video_cams:
            frames = np.asarray(episode[schema.RLDS_OBSERVATION][f"image/{camera}"])
            out = root / V21_VIDEO_PATH.format(video_key=CAMERA_PREFIX + camera, **fmt)
            encode_video(frames, out, fps=fps, encoder=encoder)
