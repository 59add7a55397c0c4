"""Resume time of the training stream at batch k: build the stream at its position and
take the first batch (what `train/loop.py` does after a preemption), for k = 10, 10k,
100k (positions faked: the stream is a closed-form function of (seed, position), so no
training run is needed to reach them). Prints one JSON line per k, then a summary.

  python benchmarks/resume_time.py [--episodes=200] [--batch=64] [--replay_upto=2000]

The dataset: `--episodes` episodes of the fractal20220817_data layout (one 64x80 camera,
dict action, standardized by its mapping, resized to 64x64), written to a temporary
directory. With --replay_upto > 0 the old way (`dataset.skip(k)`, replaying k batches)
is timed too for that k, for comparison. The stream's resume cost does not depend on k:
a header read per episode (already part of opening the dataset) plus at most one block
of windows per dataset recomputed (data/pipeline.py module docstring).
"""

import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from action_gen import cli

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NAME = "fractal20220817_data"


def _episode(i: int, length: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "observation": {
            "image": rng.integers(0, 255, (length, 64, 80, 3), dtype=np.uint8),
            "base_pose_tool_reached": rng.normal(size=(length, 7)).astype(np.float32),
            "gripper_closed": rng.uniform(size=(length, 1)).astype(np.float32),
            "natural_language_instruction": np.asarray(["pick coke can"] * length),
        },
        "action": {
            "world_vector": rng.normal(size=(length, 3)).astype(np.float32),
            "rotation_delta": rng.normal(size=(length, 3)).astype(np.float32),
            "gripper_closedness_action": rng.choice([-1.0, 0.0, 1.0], (length, 1)).astype(
                np.float32
            ),
        },
    }


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--length", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", default="10,10000,100000")
    parser.add_argument("--replay_upto", type=int, default=0)
    args = parser.parse_args()
    # TensorFlow only here: benchmarks stay importable on the accelerator machine (no TF).
    from action_gen.data import pipeline, rlds, standardize

    root = tempfile.mkdtemp(prefix="resume_time_")
    episodes = [_episode(i, args.length) for i in range(args.episodes)]
    path = rlds.write_rlds_dataset(episodes, root, name=NAME, image_encoding="jpeg")
    (mapping,) = standardize.resolve_mappings([NAME], [path])
    stats = pipeline.compute_dataset_norm_stats(path, mapping=mapping, name=NAME)

    def stream(start_batch: int):
        return pipeline.create_train_dataset(
            path,
            obs_horizon=2,
            action_horizon=16,
            batch_size=args.batch,
            norm_stats=stats,
            shuffle_buffer=2_000,
            mappings=[mapping],
            dataset_names=[NAME],
            cameras={"primary": (64, 64)},
            start_batch=start_batch,
        )

    def first_batch_seconds(build) -> tuple[float, float]:
        """(wall seconds, CPU seconds of all threads) to build the stream and take a batch;
        the CPU figure is what a loaded machine does not inflate."""
        start, cpu = time.perf_counter(), time.process_time()
        next(pipeline.iterate_numpy_batches(build()))
        return time.perf_counter() - start, time.process_time() - cpu

    machine = {
        "cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    figures = {}
    for k in (int(s) for s in args.steps.split(",")):
        seconds, cpu = first_batch_seconds(lambda k=k: stream(k))
        figures[k] = seconds
        print(
            json.dumps(
                {
                    "resume_at_batch": k,
                    "seconds": round(seconds, 3),
                    "cpu_seconds": round(cpu, 3),
                    "batch": args.batch,
                    "episodes": args.episodes,
                    **machine,
                }
            ),
            flush=True,
        )
    if args.replay_upto:
        k = args.replay_upto
        seconds, cpu = first_batch_seconds(lambda: stream(0).skip(k))
        print(
            json.dumps(
                {
                    "replay_skip_batches": k,
                    "seconds": round(seconds, 3),
                    "cpu_seconds": round(cpu, 3),
                    **machine,
                }
            )
        )
    print(
        json.dumps(
            {
                "summary": {str(k): round(v, 3) for k, v in figures.items()},
                "max_seconds": round(max(figures.values()), 3),
                "target_seconds": 10,
            }
        )
    )


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
