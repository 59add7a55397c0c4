"""Where a run's training data lives, from its config alone (no data is read or written).

`data.dataset_dir` is a directory or a list of them (a mixture); `data.builtin_task` a
built-in task name or a list (one per directory). An empty `data.dataset_dir` means
`<workdir>/dataset` for one task and `<workdir>/dataset/<task>` for each of several.
A mixture of external datasets may instead list `data.dataset_dirs` (comma-separated), and
`data.dataset_names` names each one's layout (data/standardize.py); a `lerobot` entry's
directory (or, without names, any directory holding a LeRobot dataset's meta/info.json) is
converted once by the data step into `<workdir>/dataset/lerobot_<dir name>`
(`lerobot_conversions`), which the run then reads; with `data.loader='memory'`
(data/memory.py) nothing is converted and the run reads the LeRobot directory itself.
Built-in demos are collected by an explicit data step (`envs.collect.collect_builtin_datasets`,
which `python -m action_gen.main` runs before training), never by the train loop.
"""

import os
import re

import ml_collections


def as_list(value) -> list:
    """A config value that may be one item or a list of them, as a list ('' / None: [])."""
    if value is None or value == "":
        return []
    if isinstance(value, str | os.PathLike):
        return [value]
    return list(value)


def task_slug(task: str) -> str:
    """A directory name for a task name ('metaworld:push@corner2:96' -> 'push_corner2_96')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task.split(":", 1)[-1]).strip("_")


def builtin_tasks(data_config: ml_collections.ConfigDict) -> list[str]:
    """The built-in task names of `data.builtin_task` (empty for external data)."""
    return [str(t) for t in as_list(data_config.builtin_task)]


LEROBOT = "lerobot"
# The training stream (`data.loader`): tf.data over RLDS (data/pipeline.py; LeRobot data is
# converted first), or one LeRobot dataset held in memory and read in place (data/memory.py).
TFDATA, MEMORY = "tfdata", "memory"


def loader(data_config: ml_collections.ConfigDict) -> str:
    """`data.loader`, checked (ValueError naming the field and the choices)."""
    value = data_config.loader
    if value not in (TFDATA, MEMORY):
        raise ValueError(f"data.loader={value!r}; choose one of {TFDATA!r}, {MEMORY!r}")
    return value


def dataset_names(data_config: ml_collections.ConfigDict) -> list[str]:
    """`data.dataset_names`: the layout name of each dataset (empty: our own layout)."""
    return [str(n) for n in as_list(data_config.dataset_names)]


def _configured_dirs(data_config: ml_collections.ConfigDict) -> list[str]:
    dirs = [os.fspath(d) for d in as_list(data_config.dataset_dir)]
    if not dirs:
        listed = data_config.dataset_dirs or ""
        if isinstance(listed, str):
            listed = listed.split(",")
        dirs = [os.fspath(d).strip() for d in listed if os.fspath(d).strip()]
    names = dataset_names(data_config)
    if names and dirs and len(names) != len(dirs):
        raise ValueError(
            f"data.dataset_names has {len(names)} names ({'+'.join(names)}) but "
            f"{len(dirs)} dataset directories are given; pass one per name "
            "(data.dataset_dir for one, data.dataset_dirs=A,B,C for several)"
        )
    return dirs


def is_lerobot_dir(path) -> bool:
    """Whether `path` holds a LeRobot dataset (its `meta/info.json`)."""
    return os.path.isfile(os.path.join(os.fspath(path), "meta", "info.json"))


def lerobot_conversions(data_config: ml_collections.ConfigDict, workdir: str) -> list:
    """(LeRobot source directory, RLDS root it is converted into) of each `lerobot` entry,
    and, when `data.dataset_names` is empty, of each directory that is a LeRobot dataset
    (`is_lerobot_dir`: its meta/info.json). None with `data.loader='memory'`, which reads
    LeRobot datasets in place."""
    if loader(data_config) == MEMORY:
        return []
    dirs = _configured_dirs(data_config)
    names = dataset_names(data_config)
    out = []
    for i, src in enumerate(dirs):
        name = names[i] if i < len(names) else None
        if name == LEROBOT or (not names and is_lerobot_dir(src)):
            slug = task_slug(os.path.basename(os.path.normpath(src))) or "dataset"
            out.append((src, os.path.join(workdir, "dataset", f"lerobot_{slug}")))
    return out


def dataset_dirs(data_config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The dataset directories of a run, one per dataset (one per built-in task; a LeRobot
    entry's converted copy).

    Raises:
      ValueError: when `data.dataset_dir` and `data.builtin_task` name different counts.
    """
    tasks = builtin_tasks(data_config)
    dirs = _configured_dirs(data_config)
    converted = dict(lerobot_conversions(data_config, workdir))
    dirs = [converted.get(d, d) for d in dirs]
    if not dirs:
        base = os.path.join(workdir, "dataset")
        dirs = [base] if len(tasks) <= 1 else [os.path.join(base, task_slug(t)) for t in tasks]
    if tasks and len(dirs) != len(tasks):
        raise ValueError(
            f"data.dataset_dir lists {len(dirs)} directories but data.builtin_task names "
            f"{len(tasks)} tasks; give one directory per task, or leave data.dataset_dir empty"
        )
    return dirs


def mixture_weights(data_config: ml_collections.ConfigDict, num_datasets: int):
    """`data.weights` (one per dataset) or None (equal weights); checked against the count."""
    weights = as_list(data_config.weights)
    if not weights:
        return None
    if len(weights) != num_datasets:
        raise ValueError(
            f"data.weights has {len(weights)} entries for {num_datasets} datasets; give one "
            "per dataset (data.dataset_dir / data.builtin_task) or none for equal weights"
        )
    return [float(w) for w in weights]
