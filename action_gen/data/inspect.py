"""Print an RLDS or LeRobot dataset's features and how a run reads them.

  python -m action_gen.data.inspect DIR

A LeRobot dataset (DIR holds meta/info.json, codebase v3.0 or v2.1): its version, fps,
episode and frame counts, every feature with dtype and shape, and the cameras, state,
action and task text a run takes from it (the conversion in data/lerobot.py).

An RLDS dataset: DIR is `<data_dir>`, `<data_dir>/<name>` or
`<data_dir>/<name>/<version>` (the newest version is read). Prints the TFDS name,
version, splits with their episode counts, every step / episode feature with its shape
and dtype, the registered mapping that fits the dataset (data/standardize.py REGISTRY) if
any, and a starter mapping to edit into a JSON file passed as
`--config.data.mapping_file=FILE` — the same text an unknown dataset's error carries.
"""

import os
import pprint

from action_gen import cli
from action_gen.data import lerobot


def describe_lerobot(src_dir) -> str:
    """The report printed by `main` for the LeRobot dataset at `src_dir` (its
    meta/info.json, checked by `lerobot.read_lerobot_info`)."""
    import json  # noqa: PLC0415

    info = lerobot.read_lerobot_info(src_dir)
    raw = json.loads((info.root / lerobot.INFO_PATH).read_text())
    counts = ", ".join(
        f"{raw[k]} {k.removeprefix('total_')}"
        for k in ("total_episodes", "total_frames", "total_tasks")
        if k in raw
    )
    lines = [
        f"LeRobot dataset ({info.version}, fps {info.fps:g}"
        + (f", robot {info.robot_type}" if info.robot_type else "")
        + f") at {info.root}",
        f"contents: {counts or 'counts not stated in meta/info.json'}",
        "features:",
    ]
    for key, feature in info.features.items():
        shape = tuple(feature.get("shape") or ())
        lines.append(f"  {key}: {feature['dtype']} {list(shape)}")
    cameras = ", ".join(f"{k} -> camera {name!r}" for name, k in info.cameras.items())
    lines += [
        "a run reads (converted once to RLDS in its workdir):",
        f"  {lerobot.STATE_KEY} -> state, {lerobot.ACTION_KEY} -> actions, "
        "the frame's task -> the instruction",
        f"  {cameras or 'no image or video features'}",
        "train with --config.data.dataset_dir=<this directory> (configs/diffusion_unet_dataset.py"
        ":name=lerobot, or configs/flow_pi0_openpi.py:pi0,robot=NAME for an openpi model)",
    ]
    return "\n".join(lines)


def describe(data_dir) -> str:
    """The report printed by `main` for the dataset at `data_dir` (LeRobot or RLDS)."""
    if lerobot.is_lerobot_dataset(data_dir):
        return describe_lerobot(data_dir)
    from action_gen.data import rlds, standardize  # noqa: PLC0415 - TensorFlow only for RLDS

    builder = rlds.load_builder(data_dir)
    path = os.fspath(builder.data_dir)
    info = builder.info
    described = standardize.describe_features(info.features)
    splits = ", ".join(f"{k}: {v.num_examples} episodes" for k, v in sorted(info.splits.items()))
    parent = os.path.basename(os.path.dirname(os.path.normpath(path)))
    registered = standardize.registry_name_for(info.name, [parent])
    lines = [f"RLDS dataset {info.name} {info.version} at {path}", f"splits: {splits}"]
    if registered is not None:
        mapping = standardize.check_mapping(standardize.REGISTRY[registered], registered)
        try:
            standardize.check_against_features(mapping, described, path, registered)
        except standardize.LayoutError as e:
            lines.append(f"registered mapping {registered} does NOT fit: {str(e).splitlines()[0]}")
        else:
            lines.append(
                f"registered mapping: {registered} (train with name={registered}):\n"
                + pprint.pformat(standardize.REGISTRY[registered], width=88, sort_dicts=False)
            )
    lines.append(standardize.layout_report(path, registered or parent or info.name, described))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m action_gen.data.inspect", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dir", help="<data_dir>, <data_dir>/<name> or <data_dir>/<name>/<version>")
    args = parser.parse_args(argv)
    print(describe(args.dir))
    return 0


def entry_point() -> None:
    cli.quiet_logs()
    cli.run_command(main)


if __name__ == "__main__":
    entry_point()
