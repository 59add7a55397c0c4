"""Training-input throughput in windows/s through the real stream, printed as JSON.

  .venv/bin/python benchmarks/data_throughput.py                 # all sections, full size
  .venv/bin/python benchmarks/data_throughput.py --sections lowdim --batches 400
  .venv/bin/python benchmarks/data_throughput.py --quick         # tiny sizes (the test)

Every section writes its own data into a temporary directory, then times
``pipeline.create_train_dataset`` + ``pipeline.iterate_numpy_batches`` (what the train
loop consumes: windows, shuffles, batching, normalization, numpy conversion) in steady
state: ``--warmup`` batches first (the shuffle buffer fills, the tf.data autotuner
settles), then ``--batches`` timed ones. windows/s = timed batches x batch size / s.

Sections:
  lowdim  state S=20, action A=2 (Diffusion Policy's Push-T low-dim), batch 256,
          shuffle buffer 20,000 (configs/common.py). Target on a 2-core host: >= 20,000.
  png     2 cameras at --image_size^2 stored PNG in RLDS (our writer's default), batch 64.
  jpeg    the same frames stored JPEG (quality 95; what Open X-Embodiment datasets hold).
  mp4     the same frames as a LeRobot v3.0 dataset (AV1 MP4 when PyAV can encode it, as
          LeRobot records; several episodes per file), converted once by
          ``lerobot.convert_lerobot_dataset`` (reported separately as frames/s over all
          cameras) and then streamed from the converted RLDS (PNG).
  memory  the same LeRobot dataset read in place into RAM (``data.loader=memory``,
          data/memory.py: no TensorFlow; load time reported as frames/s) and streamed by
          numpy with DP's random crop (84/96 of the frame) and 4 prefetch threads.
Frames are synthetic scenes (smooth background, moving boxes, mild noise) so the PNG,
JPEG and AV1 sizes are in the range of real camera data, not of white noise.

Output: one JSON object per section as it finishes, then one object with all of them and
the machine (cores, TF version).
"""

import json
import os
import platform
import sys
import tempfile
import time

from action_gen import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- data


def lowdim_episodes(num_episodes: int, length: int, state_dim: int, action_dim: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        {
            "observation": {"state": rng.normal(size=(length, state_dim)).astype(np.float32)},
            "action": rng.normal(size=(length, action_dim)).astype(np.float32),
            "language_instruction": "push the T",
        }
        for _ in range(num_episodes)
    ]


def scene_frames(length: int, size: int, seed: int):
    """[L, size, size, 3] uint8: a smooth background, two moving boxes, noise of +-3."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    background = np.stack([120 + 60 * x, 100 + 50 * y, 90 + 40 * x * y], -1)
    frames = np.repeat(background[None], length, 0)
    for _ in range(2):
        color = rng.uniform(30, 230, 3)
        start, speed = rng.uniform(0.1, 0.6, 2), rng.uniform(-0.01, 0.01, 2)
        side = int(size * rng.uniform(0.1, 0.25))
        for t in range(length):
            cy, cx = (np.clip(start + speed * t, 0, 0.7) * size).astype(int)
            frames[t, cy : cy + side, cx : cx + side] = color
    frames += rng.integers(-3, 4, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def image_episodes(num_episodes: int, length: int, size: int, state_dim: int, action_dim: int):
    episodes = lowdim_episodes(num_episodes, length, state_dim, action_dim)
    for i, episode in enumerate(episodes):
        for c, camera in enumerate(("primary", "wrist")):
            episode["observation"][f"image/{camera}"] = scene_frames(length, size, 2 * i + c)
    return episodes


# ----------------------------------------------------------------------------- timing


def measure_stream(
    path,
    *,
    batch_size: int,
    shuffle_buffer: int,
    warmup: int,
    batches: int,
    obs_horizon: int = 2,
    action_horizon: int = 16,
) -> dict:
    """Steady-state windows/s of the training stream over the RLDS dataset at `path`: the
    tf.data stream and the host transform pipeline (normalization), as the train loop runs
    them."""
    from action_gen import config_schema
    from action_gen.data import pipeline, transforms

    start = time.perf_counter()
    stats = pipeline.compute_dataset_norm_stats(path)
    stats_s = time.perf_counter() - start
    dataset = pipeline.create_train_dataset(
        path,
        obs_horizon=obs_horizon,
        action_horizon=action_horizon,
        batch_size=batch_size,
        norm_stats=stats,
        shuffle_buffer=shuffle_buffer,
    )
    config = config_schema.base_config()  # min-max state and action normalization
    config.data.obs_horizon = obs_horizon
    transform = transforms.create_pipeline(config, stats)
    iterator = (transform.inputs(b)[0] for b in pipeline.iterate_numpy_batches(dataset))
    first_s, seconds = time_batches(iterator, warmup=warmup, batches=batches)
    return {
        "windows_per_s": round(batches * batch_size / seconds, 1),
        "batches_per_s": round(batches / seconds, 2),
        "batch_size": batch_size,
        "shuffle_buffer": shuffle_buffer,
        "obs_horizon": obs_horizon,
        "action_horizon": action_horizon,
        "timed_batches": batches,
        "first_batch_s": round(first_s, 2),
        "norm_stats_s": round(stats_s, 2),
    }


def time_batches(iterator, *, warmup: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, seconds for `batches` batches after `warmup` more)."""
    start = time.perf_counter()
    next(iterator)
    first_s = time.perf_counter() - start
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return first_s, time.perf_counter() - start


def measure_memory_stream(path, *, batch_size: int, warmup: int, batches: int) -> dict:
    """Steady-state windows/s of data/memory.py's stream over the LeRobot dataset at
    `path`, with the host transform pipeline, as the train loop runs them."""
    from action_gen import config_schema
    from action_gen.data import memory, normalize, transforms

    start = time.perf_counter()
    stats = memory.compute_norm_stats(path)
    stats_s = time.perf_counter() - start
    state_dim, action_dim = normalize.feature_dims(stats)
    start = time.perf_counter()
    data = memory.load_dataset(
        path, obs_horizon=2, action_horizon=16, state_dim=state_dim, action_dim=action_dim
    )
    load_s = time.perf_counter() - start
    size = next(iter(data.images.values())).shape[1]
    crop = (round(size * 84 / 96),) * 2
    config = config_schema.base_config()
    transform = transforms.create_pipeline(config, stats)
    stream = memory.iterate_batches(data, global_batch_size=batch_size, seed=0, image_crop=crop)
    iterator = (transform.inputs(b)[0] for b in stream)
    _, seconds = time_batches(iterator, warmup=warmup, batches=batches)
    frames = len(data.state) * len(data.images)
    return {
        "windows_per_s": round(batches * batch_size / seconds, 1),
        "batches_per_s": round(batches / seconds, 2),
        "batch_size": batch_size,
        "image_crop": list(crop),
        "timed_batches": batches,
        "load_frames_per_s": round(frames / load_s, 1),
        "load_s": round(load_s, 2),
        "norm_stats_s": round(stats_s, 2),
    }


def _dir_mb(path) -> float:
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return round(total / 2**20, 2)


def run_section(name: str, args, root: str) -> dict:
    from action_gen.data import lerobot, lerobot_write

    if name == "lowdim":
        from action_gen.data import rlds

        windows = dict(batches=args.batches, warmup=args.warmup)
        episodes = lowdim_episodes(args.episodes, args.length, args.state_dim, args.action_dim)
        path = rlds.write_rlds_dataset(episodes, root, name="lowdim")
        out = measure_stream(
            path, batch_size=args.batch_size, shuffle_buffer=args.shuffle_buffer, **windows
        )
        return {"episodes": args.episodes, "episode_length": args.length, **out}

    episodes = image_episodes(
        args.image_episodes, args.length, args.image_size, args.state_dim, args.action_dim
    )
    common = {
        "cameras": 2,
        "image_size": args.image_size,
        "episodes": args.image_episodes,
        "episode_length": args.length,
    }
    stream = dict(batch_size=args.image_batch_size, shuffle_buffer=args.image_shuffle_buffer)
    windows = dict(batches=args.image_batches, warmup=args.image_warmup)
    if name in ("png", "jpeg"):
        from action_gen.data import rlds

        path = rlds.write_rlds_dataset(episodes, root, name=name, image_encoding=name)
        return {**common, "rlds_mb": _dir_mb(path), **measure_stream(path, **stream, **windows)}
    if name == "mp4":
        src = os.path.join(root, "lerobot_src")
        encoder = lerobot_write.default_video_encoder()
        lerobot_write.write_lerobot_dataset(episodes, src, fps=10, episodes_per_file=4)
        frames = sum(len(e["action"]) for e in episodes) * 2
        start = time.perf_counter()
        path = lerobot.convert_lerobot_dataset(src, os.path.join(root, "converted"))
        convert_s = time.perf_counter() - start
        return {
            **common,
            "encoder": encoder,
            "mp4_mb": _dir_mb(os.path.join(src, "videos")),
            "conversion_frames_per_s": round(frames / convert_s, 1),
            "conversion_s": round(convert_s, 2),
            "rlds_mb": _dir_mb(path),
            **measure_stream(path, **stream, **windows),
        }
    if name == "memory":
        src = os.path.join(root, "lerobot_src")
        lerobot_write.write_lerobot_dataset(episodes, src, fps=10, episodes_per_file=4)
        return {
            **common,
            "mp4_mb": _dir_mb(os.path.join(src, "videos")),
            **measure_memory_stream(src, batch_size=args.image_batch_size, **windows),
        }
    raise ValueError(f"unknown section {name!r}")


def machine() -> dict:
    try:
        import tensorflow as tf

        tf_version = tf.__version__
    except ImportError:  # the memory section runs without it
        tf_version = None
    return {
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "tensorflow": tf_version,
        # Other processes on a shared host slow every figure: the 1-minute load average
        # at the end of the run (2 cores: > 2 means contention).
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


QUICK = dict(
    episodes=8,
    length=20,
    image_episodes=2,
    image_size=32,
    batches=3,
    warmup=1,
    image_batches=3,
    image_warmup=1,
    batch_size=32,
    shuffle_buffer=64,
    image_batch_size=8,
    image_shuffle_buffer=16,
)


def main(argv=None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="lowdim,png,jpeg,mp4,memory")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds; the test)")
    parser.add_argument("--episodes", type=int, default=200, help="low-dim episodes")
    parser.add_argument("--length", type=int, default=100, help="steps per episode")
    parser.add_argument("--state_dim", type=int, default=20)
    parser.add_argument("--action_dim", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=256, help="low-dim batch")
    parser.add_argument("--shuffle_buffer", type=int, default=20_000, help="low-dim windows")
    parser.add_argument("--image_episodes", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--image_batch_size", type=int, default=64)
    parser.add_argument("--image_shuffle_buffer", type=int, default=1_000)
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches")
    parser.add_argument("--batches", type=int, default=200, help="timed batches")
    parser.add_argument("--image_warmup", type=int, default=5, help="untimed image batches")
    parser.add_argument("--image_batches", type=int, default=30, help="timed image batches")
    parser.add_argument("--workdir", default=None, help="where the data goes (default: temp)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    sys.path.insert(0, REPO)
    os.environ.setdefault("SVT_LOG", "1")  # libsvtav1 prints a banner per encoder otherwise

    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for name in [s for s in args.sections.split(",") if s]:
            row = {"section": name, **run_section(name, args, os.path.join(tmp, name))}
            print(json.dumps(row), flush=True)
            results[name] = row
    command = "python benchmarks/data_throughput.py " + " ".join(argv or sys.argv[1:])
    print(json.dumps({"machine": machine(), "command": command.strip(), "results": results}))
    return 0


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
