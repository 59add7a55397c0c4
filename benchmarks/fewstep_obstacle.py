"""Few-step methods on the obstacle task, trained and evaluated in one process without
TensorFlow (for a GPU machine that has none): the method comparison of issue 16.

Two stages:
  --export: (here, with TensorFlow) the obstacle run's training stream, written as
      numpy batches: DIR/batches.npz (`--num_batches` batches of the config's batch size,
      normalized exactly as the train loop feeds them) and DIR/norm_stats.json.
  --run: (anywhere) trains each method of METHODS on those batches with the same
      compiled program as the train loop (`build_train_program`; batch k of step k,
      cycling), then evaluates each with `eval.evaluate.evaluate_policy` (100 seeded
      episodes) at the listed step counts; one JSON line per evaluation to OUT/results.jsonl.

  .venv/bin/python benchmarks/fewstep_obstacle.py --export --data=/tmp/fewstep_data \
      --dataset=/tmp/h16_chain/dataset
  python benchmarks/fewstep_obstacle.py --run --data=/tmp/fewstep_data --out=/tmp/out

The consistency student starts from, and distills, the flow teacher trained first.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs import (  # noqa: E402
    consistency_unet_obstacle,
    flow_unet_obstacle,
    shortcut_unet_obstacle,
)

# name -> (config, evaluated step counts); the teacher first (the student needs it).
METHODS = {
    "flow": (lambda: flow_unet_obstacle.get_config("demo"), (1, 3, 10)),
    "consistency": (lambda: consistency_unet_obstacle.get_config("runlocal"), (1, 2, 4)),
    "shortcut": (lambda: shortcut_unet_obstacle.get_config("demo"), (1, 2, 4)),
}


def export(data_dir: str, dataset_dir: str, num_batches: int) -> None:
    from action_gen.data import normalize, pipeline, transforms

    config = flow_unet_obstacle.get_config("demo")
    os.makedirs(data_dir, exist_ok=True)
    norm_stats = pipeline.compute_dataset_norm_stats(dataset_dir)
    dataset = pipeline.create_train_dataset(
        dataset_dir,
        obs_horizon=config.data.obs_horizon,
        action_horizon=config.data.action_horizon,
        batch_size=config.data.batch_size,
        norm_stats=norm_stats,
        state_norm=config.data.state_norm,
        action_norm=config.data.action_norm,
        shuffle_buffer=config.data.shuffle_buffer,
        seed=config.seed,
    )
    prepare = transforms.make_batch_preparer(config, normalize.feature_dims(norm_stats)[1])
    batches = pipeline.iterate_numpy_batches(dataset)
    stacked = {}
    for _ in range(num_batches):
        for key, value in prepare(next(batches)).items():
            if isinstance(value, np.ndarray) and value.dtype != object:
                stacked.setdefault(key, []).append(value)
    np.savez_compressed(
        os.path.join(data_dir, "batches.npz"), **{k: np.stack(v) for k, v in stacked.items()}
    )
    with open(os.path.join(data_dir, "norm_stats.json"), "w") as f:
        json.dump(norm_stats, f)


def train(config, batches: dict, norm_stats: dict, teacher=None, log=print):
    """(EMA params, seconds) after `config.train.num_steps` steps on the exported batches."""
    import jax

    from action_gen.data import normalize, spec
    from action_gen.train import sharding
    from action_gen.train import teacher as teacher_lib
    from action_gen.train.program import build_train_program

    state_dim, action_dim = normalize.feature_dims(norm_stats)
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
        state = teacher_lib.init_from_teacher(state, teacher, program.state_shardings)
    count = len(next(iter(batches.values())))
    tic = time.perf_counter()
    for step in range(config.train.num_steps):
        batch = {k: v[step % count] for k, v in batches.items()}
        state, metrics = program.step_fn(
            state, jax.device_put(batch, program.batch_sharding), train_rng
        )
        if (step + 1) % 500 == 0:
            log(f"  step {step + 1}: loss {float(metrics['loss']):.5f}")
    jax.block_until_ready(state)
    return state.ema_params, time.perf_counter() - tic


def chunk_latency_ms(policy, repeats: int = 30) -> float:
    """Fastest of `repeats` batch-1 chunks (normalization + sampler, one program)."""
    from action_gen.data import schema

    state_dim = policy.state_dim
    obs = {schema.OBS_STATE: np.zeros((1, policy.obs_horizon, state_dim), np.float32)}
    policy.sample_actions(obs, 0)
    times = []
    for i in range(repeats):
        tic = time.perf_counter()
        np.asarray(policy.sample_actions(obs, i))
        times.append(time.perf_counter() - tic)
    return 1e3 * min(times)


def run(data_dir: str, out_dir: str, methods: list[str], episodes: int, steps=None) -> None:
    import jax

    from action_gen import checkpoint, models, objectives
    from action_gen.eval import evaluate
    from action_gen.sample.policy import Policy
    from action_gen.train import teacher as teacher_lib

    os.makedirs(out_dir, exist_ok=True)
    loaded = np.load(os.path.join(data_dir, "batches.npz"))
    batches = {k: loaded[k] for k in loaded.files}
    with open(os.path.join(data_dir, "norm_stats.json")) as f:
        norm_stats = json.load(f)
    results = open(os.path.join(out_dir, "results.jsonl"), "a")
    device = jax.devices()[0].device_kind
    trained = {}
    for name in methods:
        config = METHODS[name][0]()
        if steps:  # a smoke test of this script
            config.train.num_steps = steps
        teacher = None
        if config.objective.get("teacher_workdir"):
            teacher_config = config.teacher
            teacher_lib.check_student_config(
                checkpoint.config_to_json_dict(teacher_config),
                checkpoint.config_to_json_dict(config),
                "flow (this process)",
            )
            params, _ = trained["flow"]
            apply_fn = models.make_apply_fn(models.create_model(teacher_config.model))
            teacher = teacher_lib.LoadedTeacher(
                objectives.Teacher(apply_fn, params), {}, norm_stats, "flow (this process)"
            )
        print(f"{name}: training {config.train.num_steps} steps", flush=True)
        params, seconds = train(config, batches, norm_stats, teacher)
        trained[name] = (params, seconds)
        for num_steps in METHODS[name][1]:
            policy = Policy(config, params, norm_stats, num_sample_steps=num_steps)
            eval_config = config.eval.copy_and_resolve_references()
            eval_config.num_episodes = episodes
            summary, _ = evaluate.evaluate_policy(policy, eval_config)
            summary["chunk_latency_ms"] = chunk_latency_ms(policy)
            line = {
                "method": name,
                "device": device,
                "train_steps": int(config.train.num_steps),
                "train_s": round(seconds, 1),
                **summary,
            }
            results.write(json.dumps(line) + "\n")
            results.flush()
            print(
                f"  {name} S={num_steps}: success {summary['success_rate']:.2f} collisions "
                f"{summary['collision_rate']:.2f} left {summary['mode_left_fraction']:.2f} "
                f"right {summary['mode_right_fraction']:.2f} jerk {summary['action_jerk']:.2e}",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--run", action="store_true")
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", default="")
    parser.add_argument("--num_batches", type=int, default=200)
    parser.add_argument("--out", default="")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=0, help="override train steps (smoke)")
    args = parser.parse_args()
    if args.export:
        export(args.data, args.dataset, args.num_batches)
    if args.run:
        run(args.data, args.out, args.methods.split(","), args.episodes, args.steps or None)


if __name__ == "__main__":
    main()
