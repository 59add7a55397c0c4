"""A distillation chain (teacher -> few-step students -> evaluations) trained and evaluated
in one process without TensorFlow, for the GPU machine, which has none.

Any distillation config works (its `config.teacher` is the teacher run):
configs/consistency_unet_obstacle.py, consistency_unet_metaworld.py, consistency_pi0_obstacle.py.

Two stages:
  --export (here, with TensorFlow): collects the config's built-in demos if they are
      missing, reads the training stream exactly as the train loop builds it (same
      normalization and batch preparation), and writes every distinct window once:
      DATA/windows.npz (one [W, ...] array per batch key), DATA/norm_stats.json and
      DATA/config.txt (the config spec).
  --run (anywhere): trains the teacher on batches drawn from those windows (a fresh
      permutation per epoch, seeded by the config's seed: tf.data's shuffle with a full
      buffer) with the train loop's compiled program (`build_train_program`), evaluates it
      at its own step count, then trains each student variant (the config, with
      `--variants` overrides) from it and evaluates it at 1 and 2 steps with
      `eval.evaluate.evaluate_policy`: one JSON line per evaluation in OUT/results.jsonl
      (obstacle runs add "first_chunk": benchmarks/first_chunk_modes.py's statistics).

  .venv/bin/python benchmarks/fewstep_chain.py --export \
      --config=configs/consistency_unet_metaworld.py:task=push,cpu --data=/tmp/fs_push
  python benchmarks/fewstep_chain.py --run --data=/tmp/fs_push --out=/tmp/out \
      [--variants='default:;long:train.num_steps=6000'] [--episodes=50] \
      [--overrides='model.down_dims=(128,256,512)']   # the teacher and every student

What differs from `python -m action_gen.main --mode=train_and_eval` with the same config:
the data order (uniform over the same windows, not tf.data's stream), and no checkpoints
(parameters stay in memory; media recording is off).
"""

import ast
import hashlib
import importlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from action_gen import cli
from benchmarks import first_chunk_modes  # noqa: E402

WINDOWS_FILE = "windows.npz"
NORM_STATS_FILE = "norm_stats.json"
CONFIG_FILE = "config.txt"
# Obstacle runs: the first chunk's mode blending (benchmarks/first_chunk_modes.py) on this
# many evaluation starts x chunks each, beside every evaluation.
FIRST_CHUNK_STARTS, FIRST_CHUNK_SAMPLES = 20, 200


def load_config(spec: str):
    """The ConfigDict of `spec` ("configs/NAME.py[:ARG]"), as `--config=spec` gives it."""
    path, _, arg = spec.partition(":")
    module_name = os.path.splitext(os.path.normpath(path))[0].replace(os.sep, ".")
    return importlib.import_module(module_name).get_config(arg or None)


def _split_top_level(text: str) -> list[str]:
    """`text` split at the commas outside brackets: "a=(1, 2),b=3" -> ["a=(1, 2)", "b=3"]."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def apply_overrides(config, overrides: str):
    """`config` with "a.b=value,c.d=value" applied (values read as Python literals, so
    tuples are written "model.down_dims=(128,256,512)")."""
    for item in _split_top_level(overrides):
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"overrides: {item!r} is not key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.strip().split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"overrides: the config has no field {key!r}")
        node[leaf] = value
    return config


def parse_variants(text: str) -> list[tuple[str, str]]:
    """'name:overrides;name:overrides' -> [(name, overrides)]; '' -> the config as it is."""
    variants = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, overrides = part.partition(":")
        variants.append((name.strip(), overrides.strip()))
    return variants or [("default", "")]


def _teacher_config(config):
    if config.get("teacher") is None:
        raise ValueError("the config has no `teacher`: use a distillation config")
    return config.teacher


def export(spec: str, data_dir: str, max_batches: int, patience: int) -> None:
    """Writes every distinct training window of `spec`'s data to `data_dir`."""
    from action_gen import main as cli
    from action_gen.data import pipeline, transforms
    from action_gen.train import loop

    config = load_config(spec)
    teacher = _teacher_config(config)
    if teacher.data.get("image_crop"):
        raise ValueError(
            f"{spec}: data.image_crop crops every pass differently, so the stream has no "
            "fixed set of windows to export; export configs without random crops"
        )
    workdir = os.path.abspath(os.path.join(data_dir, "work"))
    os.makedirs(workdir, exist_ok=True)
    cli.collect_data(teacher, workdir)
    dataset_dirs = loop.existing_dataset_dirs(teacher, workdir)
    if len(dataset_dirs) != 1:
        raise ValueError(f"{spec}: export handles one dataset, got {dataset_dirs}")
    norm_stats = pipeline.compute_dataset_norm_stats(dataset_dirs[0])
    data = teacher.data
    dataset = pipeline.create_train_dataset(
        dataset_dirs[0],
        obs_horizon=data.obs_horizon,
        action_horizon=data.action_horizon,
        batch_size=data.batch_size,
        norm_stats=norm_stats,
        shuffle_buffer=data.shuffle_buffer,
        seed=teacher.seed,
    )
    transform = transforms.create_pipeline(teacher, norm_stats)

    def prepare(batch):
        return transform.inputs(batch)[0]

    batches = pipeline.iterate_numpy_batches(dataset)
    seen, rows = set(), {}
    since_new = 0
    for _ in range(max_batches):
        batch = {
            k: v
            for k, v in prepare(next(batches)).items()
            if isinstance(v, np.ndarray) and v.dtype != object
        }
        keys = sorted(batch)
        new = 0
        for i in range(len(batch[keys[0]])):
            digest = hashlib.sha1(b"".join(batch[k][i].tobytes() for k in keys)).digest()
            if digest in seen:
                continue
            seen.add(digest)
            new += 1
            for k in keys:
                rows.setdefault(k, []).append(batch[k][i])
        since_new = 0 if new else since_new + 1
        if since_new >= patience:
            break
    windows = {k: np.stack(v) for k, v in rows.items()}
    np.savez_compressed(os.path.join(data_dir, WINDOWS_FILE), **windows)
    with open(os.path.join(data_dir, NORM_STATS_FILE), "w") as f:
        json.dump(norm_stats, f)
    with open(os.path.join(data_dir, CONFIG_FILE), "w") as f:
        f.write(spec + "\n")
    print(f"{spec}: {len(seen)} distinct windows -> {data_dir}", flush=True)
    steps = norm_stats["actions"]["count"]
    if len(seen) != steps:  # identical steps, or --patience too small to see them all
        print(f"warning: {len(seen)} distinct windows for {steps} demo steps", flush=True)


def batch_stream(windows: dict, batch_size: int, seed: int):
    """Batches of `batch_size` windows: each epoch a fresh permutation (remainder dropped)."""
    count = len(next(iter(windows.values())))
    if count < batch_size:
        raise ValueError(f"{count} windows are fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(count)
        for start in range(0, count - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield {k: v[index] for k, v in windows.items()}


def train(config, windows: dict, norm_stats: dict, teacher=None, log=print):
    """(EMA params, seconds of the steps after the first, seconds of the first step: its
    compilation) after `config.train.num_steps` steps."""
    import jax

    from action_gen.data import normalize, spec
    from action_gen.train import sharding
    from action_gen.train import teacher as teacher_lib
    from action_gen.train.program import build_train_program

    state_dim, data_action_dim = normalize.feature_dims(norm_stats)
    action_dim = spec.model_action_dim(config.model, data_action_dim)
    mesh = sharding.create_mesh(config.mesh)
    example_obs = spec.example_observation(spec.observation_spec(config.data, state_dim))
    program = build_train_program(
        config,
        mesh,
        example_obs,
        (config.data.action_horizon, action_dim),
        teacher=None if teacher is None else teacher.teacher,
    )
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    state = program.init_fn(init_rng)
    if teacher is not None and config.train.get("init_from_teacher", False):
        state = teacher_lib.init_from_teacher(state, teacher, program.state_shardings, init_rng)
    batches = batch_stream(windows, config.data.batch_size, config.seed)
    tic = time.perf_counter()
    first_step_s = 0.0
    for step in range(config.train.num_steps):
        batch = jax.device_put(next(batches), program.batch_sharding)
        state, metrics = program.step_fn(state, batch, train_rng)
        if step == 0:
            jax.block_until_ready(state)
            first_step_s = time.perf_counter() - tic
            tic = time.perf_counter()
        if (step + 1) % 1000 == 0:
            log(f"  step {step + 1}: loss {float(metrics['loss']):.5f}")
    jax.block_until_ready(state)
    return state.ema_params, time.perf_counter() - tic, first_step_s


def evaluate(config, params, norm_stats: dict, num_steps: int, episodes: int) -> dict:
    """The eval summary (as results.json has it) of `params` sampled at `num_steps`."""
    from action_gen.eval import evaluate as evaluate_lib
    from action_gen.sample.policy import Policy

    policy = Policy(config, params, norm_stats, num_sample_steps=num_steps)
    eval_config = config.eval.copy_and_resolve_references()
    if episodes:
        eval_config.num_episodes = episodes
    eval_config.record = ""
    tic = time.perf_counter()
    summary, _ = evaluate_lib.evaluate_policy(policy, eval_config)
    summary["eval_s"] = round(time.perf_counter() - tic, 1)
    if eval_config.env == "obstacle":  # the first chunk's mode blending, open loop
        summary["first_chunk"] = first_chunk_modes.first_chunk_modes(
            policy.sample_actions,
            num_starts=FIRST_CHUNK_STARTS,
            samples_per_start=FIRST_CHUNK_SAMPLES,
            eval_seed=int(eval_config.seed),
            obs_horizon=policy.obs_horizon,
        )
    return summary


def run(
    data_dir: str,
    out_dir: str,
    variants,
    episodes: int,
    teacher_steps,
    smoke_steps,
    common_overrides: str = "",
):
    import jax

    from action_gen import compat, models, objectives
    from action_gen.data import spec as spec_lib
    from action_gen.train import teacher as teacher_lib

    with open(os.path.join(data_dir, CONFIG_FILE)) as f:
        spec = f.read().strip()
    loaded = np.load(os.path.join(data_dir, WINDOWS_FILE))
    windows = {k: loaded[k] for k in loaded.files}
    with open(os.path.join(data_dir, NORM_STATS_FILE)) as f:
        norm_stats = json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    results_path = os.path.join(out_dir, "results.jsonl")
    device = jax.devices()[0].device_kind

    def report(role, name, config, timing, summary):
        seconds, first_step_s = timing
        line = {
            "config": spec,
            "role": role,
            "variant": name,
            "overrides": common_overrides,
            "device": device,
            "train_steps": int(config.train.num_steps),
            "train_s": round(seconds, 1),
            "first_step_s": round(first_step_s, 1),
            **summary,
        }
        with open(results_path, "a") as results:  # one complete line per evaluation
            results.write(json.dumps(line, default=float) + "\n")
        extra = ""
        if "mode_left_fraction" in summary:
            extra = f" left {summary['mode_left_fraction']:.2f}"
            extra += f" right {summary['mode_right_fraction']:.2f}"
        if "instruction_following_rate" in summary:
            extra += f" instruction {summary['instruction_following_rate']:.2f}"
        print(
            f"[{spec}] {role} {name} S={summary['num_sample_steps']}: success "
            f"{summary['success_rate']:.2f} collisions {summary.get('collision_rate', 0):.2f}"
            f"{extra} (train {seconds:.0f} s, eval {summary['eval_s']} s)",
            flush=True,
        )

    config = load_config(spec)
    # The common overrides change the teacher and every student alike (e.g. the model's
    # size: the student starts from the teacher's weights, so they share the architecture).
    teacher_config = apply_overrides(_teacher_config(config), common_overrides)
    if not spec_lib.cameras_of(config.data):
        # State observations and no filming: no GL context is needed, and MuJoCo would
        # otherwise load EGL at import (envs/metaworld.py asks for it), which a machine
        # without libEGL (the GPU machine) fails on.
        os.environ.setdefault("MUJOCO_GL", "disable")
    if teacher_steps:
        teacher_config.train.num_steps = teacher_steps
    if smoke_steps:
        teacher_config.train.num_steps = smoke_steps
    print(f"[{spec}] teacher: {teacher_config.train.num_steps} steps", flush=True)
    params, *timing = train(teacher_config, windows, norm_stats)
    summary = evaluate(
        teacher_config, params, norm_stats, teacher_config.eval.num_sample_steps, episodes
    )
    report("teacher", teacher_config.objective.name, teacher_config, timing, summary)
    apply_fn = models.make_apply_fn(models.create_model(teacher_config.model))
    teacher = teacher_lib.LoadedTeacher(
        objectives.Teacher(apply_fn, params), {}, norm_stats, "teacher (this process)"
    )
    for name, overrides in variants:
        student = apply_overrides(apply_overrides(load_config(spec), common_overrides), overrides)
        if smoke_steps:
            student.train.num_steps = smoke_steps
        student.teacher = teacher_config
        compat.check_distillation(
            compat.config_to_json_dict(teacher_config),
            compat.config_to_json_dict(student),
            teacher.directory,
        )
        print(f"[{spec}] student {name}: {student.train.num_steps} steps", flush=True)
        params, *timing = train(student, windows, norm_stats, teacher)
        grid = int(student.objective.get("num_teacher_steps", 2))
        for num_steps in (s for s in (1, 2, 4) if s <= grid):
            summary = evaluate(student, params, norm_stats, num_steps, episodes)
            report("student", name, student, timing, summary)


def main():
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--run", action="store_true")
    parser.add_argument("--config", default="", help="configs/NAME.py:ARG (export)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default="")
    parser.add_argument("--variants", default="", help="'name:k=v,k=v;name2:...'")
    parser.add_argument(
        "--overrides", default="", help="'k=v,k=v' for the teacher and every student"
    )
    parser.add_argument("--episodes", type=int, default=0, help="0: the config's")
    parser.add_argument("--teacher_steps", type=int, default=0, help="0: the config's")
    parser.add_argument("--max_batches", type=int, default=5000)
    parser.add_argument("--patience", type=int, default=50, help="batches with no new window")
    parser.add_argument("--steps", type=int, default=0, help="every run's steps (smoke)")
    args = parser.parse_args()
    if args.export:
        export(args.config, args.data, args.max_batches, args.patience)
    if args.run:
        run(
            args.data,
            args.out,
            parse_variants(args.variants),
            args.episodes,
            args.teacher_steps or None,
            args.steps or None,
            args.overrides,
        )


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
