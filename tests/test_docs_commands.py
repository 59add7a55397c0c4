"""Every command line in README.md and docs/*.md still works as written (without running it):
the module or script exists, its --help names every flag the command passes, each
`--config=FILE:ARG` loads, and each `--config.X=VALUE` override names a field of that
config and parses as its type. A stale command fails here, not in a user's terminal.

Commands are the lines of ```bash blocks that start with `python`, `action-gen` or
`make` (continuation lines joined); `[...]` optional parts are read without brackets;
placeholders (DIR, /data/...) are not checked against the disk.
"""

import ast
import functools
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from action_gen import main as cli_main

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = {
    "action-gen": "action_gen.main",
    "action-gen-import-openpi": "action_gen.tools.openpi_import",
    "action-gen-inspect": "action_gen.data.inspect",
    "action-gen-validate": "action_gen.data.validate",
    "action-gen-convert-lerobot": "action_gen.data.convert_lerobot",
    "action-gen-collect": "action_gen.envs.collect",
}


def commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks of a markdown text."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if re.match(r"^(python|action-gen|make)\b", line):
                out.append(line)
    return out


def _tokens(command: str) -> list[str]:
    command = command.replace("[", " ").replace("]", " ").replace("...", " ")
    command = re.sub(r"\s\|\s.*", "", command)  # drop pipes
    return [t for t in shlex.split(command) if t not in ("<", ">")]


@functools.cache
def _help(program: tuple[str, ...]) -> str:
    done = subprocess.run(
        [*program, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert done.returncode == 0, f"{' '.join(program)} --help failed: {done.stderr[-2000:]}"
    return done.stdout + done.stderr


def _parse_value(text: str, current):
    """`text` as the type of the config's current value (what --config.X= accepts)."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a bool")
        return text
    if isinstance(current, int | float) and not isinstance(current, bool):
        return float(text)
    if isinstance(current, tuple | list):
        value = ast.literal_eval(text)
        if not isinstance(value, tuple | list):
            raise ValueError(f"{text!r} is not a tuple")
        return value
    return text


def check_command(command: str) -> list[str]:
    """The problems of one documented command line (empty: fine)."""
    tokens = _tokens(command)
    if tokens[0] == "make":
        targets = re.findall(r"^([a-z]+):", (REPO / "Makefile").read_text(), re.M)
        return [f"make target {t!r} missing" for t in tokens[1:] if t not in targets]
    if tokens[0] in SCRIPTS:
        program, args = (sys.executable, "-m", SCRIPTS[tokens[0]]), tokens[1:]
    elif tokens[:2] == ["python", "-m"]:
        module = tokens[2]
        path = REPO / (module.replace(".", "/") + ".py")
        if not path.exists() and not (REPO / module.replace(".", "/")).is_dir():
            return [f"module {module} does not exist"]
        program, args = (sys.executable, "-m", module), tokens[3:]
    elif tokens[0] == "python":
        if not (REPO / tokens[1]).exists():
            return [f"script {tokens[1]} does not exist"]
        program, args = (sys.executable, tokens[1]), tokens[2:]
    else:
        return [f"unknown command {tokens[0]}"]
    problems = []
    help_text = _help(program)
    config_spec = None
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name == "config":
            config_spec = arg.split("=", 1)[1]
        if name.startswith("config."):
            continue
        if not re.search(rf"--(\[no\])?{re.escape(name)}\b", help_text):
            problems.append(f"flag --{name} is not in {' '.join(program[1:])} --help")
    if config_spec is not None and ".py" in config_spec:  # else a placeholder (FILE, ...)
        try:
            config = cli_main.load_config_file(str(REPO / config_spec))
        except Exception as e:  # noqa: BLE001 - the problem is the report
            return [*problems, f"--config={config_spec}: {e}"]
        flat = config.to_dict()
        for arg in args:
            if not arg.startswith("--config."):
                continue
            path, _, value = arg[len("--config.") :].partition("=")
            node = flat
            for part in path.split("."):
                if not isinstance(node, dict) or part not in node:
                    problems.append(f"--config.{path}: {config_spec} has no field {path!r}")
                    break
                node = node[part]
            else:
                try:
                    _parse_value(value, node)
                except (ValueError, SyntaxError) as e:
                    problems.append(f"--config.{path}={value}: {e}")
    return problems


DOCUMENTED = [(doc.name, c) for doc in DOCS for c in commands(doc.read_text())]


@pytest.mark.parametrize("doc, command", DOCUMENTED, ids=[c[:60] for _, c in DOCUMENTED])
def test_documented_command_works_as_written(doc, command):
    assert check_command(command) == [], f"{doc}: {command}"


def test_a_broken_command_fails():
    """The check itself: a misspelt module, flag, config file and field are each caught."""
    good = "python -m action_gen.main --config=configs/diffusion_unet_obstacle.py:demo " \
           "--workdir=/tmp/x --config.optimizer.lr=3e-4"  # fmt: skip
    assert check_command(good) == []
    assert check_command(good.replace("action_gen.main", "action_gen.mian"))
    assert check_command(good.replace("--workdir", "--work_dir"))
    assert check_command(good.replace("obstacle.py", "obstacel.py"))
    assert check_command(good.replace("optimizer.lr", "optimizer.lrr"))
    assert check_command(good.replace(":demo", ":dmeo"))
    assert check_command("make tests")
    assert len(DOCUMENTED) > 20  # the parser finds the README's commands
