"""Command line: train, evaluate, or both, from an ml_collections config file.

  python -m action_gen.main --config=configs/diffusion_unet_obstacle.py:runlocal \
      --workdir=/tmp/run --mode=train_and_eval --config.train.num_steps=100
  python -m action_gen.main --mode=eval --workdir=/tmp/run       # the stored config
  python -m action_gen.main --mode=serve --workdir=/tmp/run      # openpi's protocol

A user error (a missing file, an unknown or misspelt config field, an empty workdir) is one
line on stderr with exit status 2; `--verbose` shows its traceback (action_gen/cli.py).

A distillation config (an objective with `teacher_workdir`, and a `teacher` section: the
teacher run's whole config) is a chain in one command: the train modes first train the
teacher in `<workdir>/<teacher_workdir>` (resumed, or reused when finished), on the
student's data, then the student in `<workdir>`; `train_and_eval` then evaluates the
student (configs/consistency_unet_obstacle.py).
"""

import difflib
import importlib.util
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from action_gen import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.")
_MODE = flags.DEFINE_enum(
    "mode",
    "train_and_eval",
    ["collect", "train", "eval", "train_and_eval", "serve"],
    "What to run (collect: only write the built-in task's demos; train modes do it first).",
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: bind address (0.0.0.0 to expose).")
_PORT = flags.DEFINE_integer("port", 8000, "serve: websocket port (0 picks a free one).")
_DATASET = flags.DEFINE_string(
    "dataset",
    None,
    "serve: for a run over several datasets (robots), the one whose robot is served (its "
    "norm stats, state / action dims and cameras).",
)
_MAX_BATCH = flags.DEFINE_integer("max_batch", 8, "serve: most requests per sampler call.")
_MAX_WAIT_MS = flags.DEFINE_float(
    "max_wait_ms", 2.0, "serve: longest a request waits for others to join its batch."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "Multi-process: host:port of process 0 (else SLURM/TPU-pod detection)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_VERBOSE = flags.DEFINE_boolean(
    "verbose", False, f"Show the traceback of a user error (or set {cli.VERBOSE_ENV}=1)."
)
flags.mark_flags_as_required(["workdir"])  # --config too, except for --mode=serve / eval


def serve(workdir: str) -> None:
    """Serves the checkpoint in `workdir` (its stored config; no --config needed). The API
    key, if any, comes from $ACTION_GEN_API_KEY (not a flag: flags show up in `ps`)."""
    from action_gen.sample.policy import Policy
    from action_gen.serve.server import PolicyServer

    policy = Policy.from_checkpoint(os.path.abspath(workdir), dataset=_DATASET.value)
    PolicyServer(
        policy,
        host=_HOST.value,
        port=_PORT.value,
        max_batch=_MAX_BATCH.value,
        max_wait_ms=_MAX_WAIT_MS.value,
        api_key=os.environ.get("ACTION_GEN_API_KEY") or None,
    ).run()


def collect_data(config, workdir: str) -> list[str]:
    """The data step: writes the built-in task's demos where the run reads them, and converts
    each LeRobot dataset of `data.dataset_names` once into RLDS under
    `<workdir>/dataset/lerobot_<dir>` (process 0 first; the other processes then find them
    on disk). Other external data is left as it is."""
    from action_gen.data import sources
    from action_gen.envs import collect
    from action_gen.train import distributed

    def step():
        for src, dst in sources.lerobot_conversions(config.data, workdir):
            from action_gen.data import lerobot

            lerobot.convert_lerobot_dataset(src, dst)
        return collect.collect_builtin_datasets(config.data, workdir)

    return distributed.process_zero_first(step, "dataset")


def train_teacher(config, workdir: str) -> bool:
    """The chain's first link: trains the teacher run `config.teacher` in the student's
    `objective.teacher_workdir` (resuming it, or reusing it when already trained), reading
    the student's dataset unless the teacher names its own. Returns whether the teacher
    finished (False: preempted, checkpoint saved)."""
    import ml_collections

    from action_gen.data import sources
    from action_gen.train import loop
    from action_gen.train import teacher as teacher_lib

    path = teacher_lib.teacher_dir(config, workdir)
    if path is None:
        raise ValueError("config.teacher is set but objective.teacher_workdir is not")
    teacher_config = ml_collections.ConfigDict(config.teacher.to_dict())
    if not sources.as_list(teacher_config.data.dataset_dir):
        dirs = sources.dataset_dirs(config.data, workdir)
        teacher_config.data.dataset_dir = dirs[0] if len(dirs) == 1 else dirs
    collect_data(teacher_config, path)
    logging.info("Teacher: %s", path)
    state = loop.train(teacher_config, path)
    return int(state.step) >= teacher_config.train.num_steps


def run(config, workdir: str, mode: str) -> dict | None:
    """Runs `mode` for `config` in `workdir`; returns the eval summary when evaluating."""
    # Imported here so `--help` and config errors answer without loading JAX/TF.
    from action_gen.eval import evaluate
    from action_gen.train import loop

    workdir = os.path.abspath(workdir)
    if mode in ("collect", "train", "train_and_eval"):
        collect_data(config, workdir)
    if mode in ("train", "train_and_eval") and "teacher" in config:
        if not train_teacher(config, workdir):
            logging.warning("the teacher stopped early (preempted); rerun the same command")
            return None
    if mode in ("train", "train_and_eval"):
        state = loop.train(config, workdir)
        if mode == "train_and_eval" and int(state.step) < config.train.num_steps:
            # Preempted (SIGTERM): the checkpoint is saved; evaluating a half-trained model
            # would write misleading results. The same command resumes, then evaluates.
            logging.warning(
                "training stopped at step %d of %d; not evaluating. Rerun the same command "
                "to resume and evaluate.",
                int(state.step),
                config.train.num_steps,
            )
            return None
    if mode in ("eval", "train_and_eval"):
        return evaluate.evaluate_checkpoint(workdir, config.eval)
    return None


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {argv[1:]} (flags are --name=value)")
    cli.own_logs_at_info()  # after app.run's logging set-up
    mode = _MODE.value
    if mode == "serve":
        serve(_WORKDIR.value)
        return
    config = _CONFIG.value
    if config is None:
        if mode != "eval":
            raise cli.UserError(f"--config=FILE is required for --mode={mode}")
        from action_gen import run as run_lib  # lazily: jax loads only past flag parsing

        config = run_lib.Run.open(_WORKDIR.value, role="--mode=eval").config()
    elif mode == "train_and_eval" and not config.eval.env:
        logging.warning(
            "eval.env is empty (no simulator for this data): --mode=train_and_eval trains "
            "only; serve the result with --mode=serve"
        )
        mode = "train"
    from action_gen.train import distributed  # lazily: jax loads only past flag parsing

    distributed.initialize_from_env(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    run(config, _WORKDIR.value, mode)


def _config_argument(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def load_config_file(spec: str):
    """`path[:arg]` → that file's `get_config(arg)`, as --config loads it, with a user error
    naming the file when it is missing or its variant is refused."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise cli.UserError(f"--config: config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_action_gen_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(arg or None) if arg else module.get_config()
    except (ValueError, KeyError) as e:
        raise cli.UserError(f"--config={spec}: {e.args[0] if e.args else e}") from e


def check_overrides(argv: list[str]) -> None:
    """Every `--config.a.b=value` names a field of the --config file's config; an unknown
    one is a user error naming it and the closest fields ("did you mean")."""
    spec = _config_argument(argv)
    overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if spec is None:
        if overrides:
            raise cli.UserError(f"--config.{overrides[0]} given without --config=FILE")
        return
    config = load_config_file(spec)
    flat = _field_paths(config.to_dict())
    for path in overrides:
        if path in flat:
            continue
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        siblings = [p for p in flat if p.rsplit(".", 1)[0] == parent] if parent else list(flat)
        close = difflib.get_close_matches(path, siblings or list(flat), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise cli.UserError(f"--config.{path}: {spec} has no field {path!r}{hint}")


def _field_paths(tree: dict, prefix: str = "") -> set[str]:
    """Every dotted path of a config dict: leaves and sections."""
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict):
            paths |= _field_paths(value, path + ".")
    return paths


def entry_point() -> None:
    """`python -m action_gen.main` / `action-gen`: the checks that answer before JAX loads,
    then absl's app.run, all under the front door's error handling (cli.run_command)."""
    cli.quiet_logs()
    argv = list(sys.argv)

    def parse_flags(args):  # flag errors as one line (absl's own report: two, exit 1)
        try:
            return flags.FLAGS(args)
        except flags.Error as e:
            raise cli.UserError(str(e)) from e

    def start():
        if any(a in ("--help", "-h", "--helpshort") for a in argv[1:]):
            print(__doc__)
            print(flags.FLAGS.module_help(sys.modules[__name__]))
            print("  --config.<field>=VALUE: override any field of the --config file's config")
            return 0
        if "--helpfull" not in argv:
            check_overrides(argv)
        app.run(main, argv=argv, flags_parser=parse_flags)

    cli.run_command(start, argv)


if __name__ == "__main__":
    entry_point()
