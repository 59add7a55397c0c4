"""Print an RLDS dataset's features and a starter mapping for it.

  python -m action_gen.data.inspect DIR

DIR is `<data_dir>`, `<data_dir>/<name>` or `<data_dir>/<name>/<version>` (the newest
version is read). Prints the TFDS name, version, splits with their episode counts, every
step / episode feature with its shape and dtype, the registered mapping that fits the
dataset (data/standardize.py REGISTRY) if any, and a starter mapping to edit into
a JSON file passed as `--config.data.mapping_file=FILE` — the same text an unknown
dataset's error carries.
"""

import os
import pprint

from action_gen import cli
from action_gen.data import rlds, standardize


def describe(data_dir) -> str:
    """The report printed by `main` for the RLDS dataset at `data_dir`."""
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
