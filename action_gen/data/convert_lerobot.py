"""Converts a LeRobot dataset directory (v3.0 or v2.1) into an RLDS dataset we train on.

    python -m action_gen.data.convert_lerobot SRC DST [--name NAME] [--fps_tolerance 0.5]
        [--image_encoding png|jpeg]

SRC is the LeRobot dataset directory (holding meta/info.json, e.g. what
``huggingface-cli download --repo-type dataset lerobot/aloha_sim_insertion_human
--local-dir SRC`` gives); the RLDS dataset goes to ``DST/<name>/1.0.0`` and its path is
printed last. Re-running with the same SRC and DST returns the existing conversion. See
``data/lerobot.py`` for the mapping and the checks.
"""

import logging
import sys
import time

from action_gen import cli
from action_gen.data import lerobot


def main(argv=None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m action_gen.data.convert_lerobot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("src", help="LeRobot dataset directory (holding meta/info.json)")
    parser.add_argument("dst", help="output root; the dataset goes to DST/<name>/1.0.0")
    parser.add_argument("--name", default=None, help="RLDS dataset name (default: SRC's name)")
    parser.add_argument(
        "--fps_tolerance",
        type=float,
        default=0.5,
        help="timestamp tolerance in frame periods (default 0.5 = 1/(2 fps))",
    )
    parser.add_argument(
        "--image_encoding",
        choices=("png", "jpeg"),
        default="png",
        help="frames in the RLDS: png (exact decoded frames) or jpeg (faster, smaller)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        info = lerobot.read_lerobot_info(args.src)
        print(
            f"LeRobot {info.version} dataset {info.root}: {info.fps:g} fps, cameras {info.cameras}",
            file=sys.stderr,
        )
        out = lerobot.convert_lerobot_dataset(
            args.src,
            args.dst,
            fps_tolerance=args.fps_tolerance,
            name=args.name,
            image_encoding=args.image_encoding,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return cli.EXIT_USER_ERROR
    print(f"converted in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(out)
    return 0


def entry_point() -> None:
    cli.quiet_logs()
    cli.run_command(main)


if __name__ == "__main__":
    entry_point()
