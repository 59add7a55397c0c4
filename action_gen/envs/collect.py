"""Scripted-expert demonstrations → an RLDS dataset on disk (ALOHA: a LeRobot dataset).

python -m action_gen.envs.collect --env=obstacle --episodes=200 --seed=0 --out=DIR
python -m action_gen.envs.collect --env=metaworld --task=push --episodes=50 \
    [--image=corner2:96] [--post_success_steps=10] --out=DIR
python -m action_gen.envs.collect --env=aloha_transfer_cube --episodes=50 \
    [--image=top:240x320 | --image=none] [--environment_state] [--workers=2] --out=DIR
python -m action_gen.envs.collect --env=aloha_insertion --episodes=50 --out=DIR

ALOHA demos (envs/aloha.py) are written as a LeRobot v3.0 dataset in the layout of
`lerobot/aloha_sim_<task>_scripted` (top camera 480x640 unless --image says otherwise,
--image=none for state only; --environment_state appends the object poses to the state),
at DIR/aloha_sim_<task>_scripted[_...], with the scripted policy's success rates in
scripted_stats.json beside meta/.
"""

import functools
import logging
import os

from absl import flags

from action_gen import cli
from action_gen.data import sources
from action_gen.envs import aloha, expert, metaworld

# TensorFlow (data/rlds.py) is imported inside the functions that write RLDS, not above:
# simulator worker processes re-import this module when it runs as the program, and
# dm-control's renderer cannot share a process with TensorFlow (envs/aloha.py).

# Built-in tasks with a scripted expert: name -> collect_demos(num_episodes, seed).
EXPERTS = {
    "obstacle": expert.collect_demos,
    "obstacle_language": functools.partial(expert.collect_demos, instructed=True),
}
DESCRIPTIONS = {
    "obstacle": "2-D reach around an obstacle; scripted expert passes left or right at random.",
    "obstacle_language": "2-D reach around an obstacle; the instruction names the side taken.",
}


def collect_to_rlds(
    task: str, out_dir: str, *, num_episodes: int, seed: int, post_success_steps: int = 0
) -> str:
    """Runs task `task`'s scripted expert for `num_episodes` seeded episodes and writes them
    as RLDS under `out_dir/<task>/1.0.0`. Returns that directory.

    `task` may also be a Meta-World spec, "metaworld:<task>[@<camera>:<size>]"
    (envs/metaworld.py: successful expert episodes only, each continued for
    `post_success_steps` expert steps past its first success, written under
    `out_dir/metaworld_<task>[_<camera><size>]/1.0.0`)."""
    if aloha.is_spec(task):
        raise ValueError(
            f"{task!r}: ALOHA demos are written as a LeRobot dataset "
            "(envs.aloha.collect_to_lerobot, or python -m action_gen.envs.collect)"
        )
    if task.startswith(metaworld.SPEC_PREFIX):
        return metaworld.collect_to_rlds(
            task,
            out_dir,
            num_episodes=num_episodes,
            seed=seed,
            post_success_steps=post_success_steps,
        )
    if task not in EXPERTS:
        raise ValueError(f"no scripted expert for task {task!r}; known: {sorted(EXPERTS)}")
    if post_success_steps:
        raise ValueError(
            f"post_success_steps={post_success_steps}: only Meta-World demos continue past "
            f"success; task {task!r} ends at its goal"
        )
    from action_gen.data import rlds

    episodes = EXPERTS[task](num_episodes, seed)
    return rlds.write_rlds_dataset(
        episodes,
        out_dir,
        name=task,
        description=f"{DESCRIPTIONS[task]} episodes={num_episodes} seed={seed}",
    )


def ensure_builtin_dataset(
    task: str, dataset_dir: str, *, num_episodes: int, seed: int, post_success_steps: int = 0
) -> str:
    """The RLDS dataset in `dataset_dir`, generated first if there is none yet.

    Writing is atomic (staged, then renamed), so a killed generation leaves no dataset
    behind and the next call simply generates again. Existing Meta-World demos collected
    with another `post_success_steps` are refused.
    """
    from action_gen.data import rlds

    try:
        path = os.fspath(rlds.resolve_dataset_dir(dataset_dir))
    except FileNotFoundError:
        pass
    else:
        if task.startswith(metaworld.SPEC_PREFIX):
            metaworld.check_collection_settings(path, post_success_steps=post_success_steps)
        return path
    logging.info("Generating %d %s demos (seed %d) in %s", num_episodes, task, seed, dataset_dir)
    os.makedirs(dataset_dir, exist_ok=True)
    return collect_to_rlds(
        task,
        dataset_dir,
        num_episodes=num_episodes,
        seed=seed,
        post_success_steps=post_success_steps,
    )


def collect_builtin_datasets(data_config, workdir: str) -> list[str]:
    """The data step of a run on built-in tasks: every `data.builtin_task`'s demos written
    to its directory (`data.sources.dataset_dirs`) unless already there. Returns the
    resolved dataset directories (unchanged for external data, which is never written)."""
    dirs = sources.dataset_dirs(data_config, workdir)
    tasks = sources.builtin_tasks(data_config)
    if not tasks:
        return dirs
    return [
        ensure_builtin_dataset(
            task,
            path,
            num_episodes=data_config.num_demo_episodes,
            seed=data_config.demo_seed,
            post_success_steps=data_config.demo_post_success_steps,
        )
        for task, path in zip(tasks, dirs, strict=True)
    ]


def main(argv):
    del argv
    values = flags.FLAGS
    if values.episodes < 1:
        raise cli.UserError(f"--episodes={values.episodes}: need at least one episode")
    env = values.env
    if aloha.is_spec(env):
        print(_collect_aloha(values))
        return
    if values.environment_state or values.workers != 1:
        raise cli.UserError("--environment_state and --workers are for ALOHA envs (aloha_*)")
    if env == "metaworld":
        if not values.task:
            raise cli.UserError("--env=metaworld needs --task=NAME (e.g. --task=push)")
        camera, size = metaworld.parse_image_flag(values.image) if values.image else (None, None)
        env = metaworld.make_spec(values.task, camera, size)
    path = collect_to_rlds(
        env,
        values.out,
        num_episodes=values.episodes,
        seed=values.seed,
        post_success_steps=values.post_success_steps,
    )
    print(path)


def _collect_aloha(values) -> str:
    """The ALOHA branch of `main`: flags -> env spec -> LeRobot dataset; returns its path."""
    if values.post_success_steps:
        raise cli.UserError(
            f"--post_success_steps={values.post_success_steps}: ALOHA demos always run the "
            f"full {aloha.EPISODE_STEPS} steps"
        )
    if values.workers < 1:
        raise cli.UserError(f"--workers={values.workers}: need at least one worker")
    try:
        if values.image is None:  # the public datasets' camera
            camera, size = aloha.DEFAULT_CAMERA, aloha.DEFAULT_IMAGE_SIZE
        else:
            no_image = values.image == "none"
            camera, size = (None, None) if no_image else aloha.parse_image_flag(values.image)
        spec = aloha.make_spec(values.env, camera, size, values.environment_state)
        return aloha.collect_to_lerobot(
            spec, values.out, num_episodes=values.episodes, seed=values.seed,
            num_workers=values.workers,
        )  # fmt: skip
    except (ValueError, FileExistsError) as e:
        raise cli.UserError(str(e)) from None


def entry_point() -> None:
    """`python -m action_gen.envs.collect` / `action-gen-collect`. Flags are defined only
    when run as a program, so importing this module (main.py's data step does) adds
    nothing to another program's command line."""
    flags.DEFINE_string(
        "env",
        "obstacle",
        "Task with a scripted expert: obstacle, obstacle_language, metaworld (with --task), "
        "aloha_transfer_cube, aloha_insertion.",
    )
    flags.DEFINE_integer("episodes", 200, "Number of demonstrations.")
    flags.DEFINE_integer("seed", 0, "Base seed (episode seeds derive from it).")
    flags.DEFINE_string("out", None, "Output directory.", required=True)
    flags.DEFINE_string("task", None, "Meta-World task name (with --env=metaworld).")
    flags.DEFINE_string(
        "image",
        None,
        "Camera images: Meta-World CAMERA:SIZE (none by default); ALOHA CAMERA:HxW (default "
        "top:480x640, as the public datasets) or 'none' for state only.",
    )
    flags.DEFINE_bool("environment_state", False, "ALOHA: append the object poses to the state.")
    flags.DEFINE_integer("workers", 1, "ALOHA: simulator processes running episodes in parallel.")
    flags.DEFINE_integer(
        "post_success_steps", 0, "Meta-World: expert steps kept past an episode's success."
    )
    cli.absl_main(main, __doc__, module=__name__)


if __name__ == "__main__":
    entry_point()
