"""The front door (action_gen/cli.py): a user error is one line on stderr with exit status
2, an internal error keeps its traceback, `--verbose` / ACTION_GEN_VERBOSE shows it; and the
entry points behave so as real programs (subprocesses, as a user runs them)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from action_gen import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raise(exc):
    raise exc


def test_user_errors_are_one_line_and_internal_errors_are_not_user_errors():
    assert cli.user_error_message(cli.UserError("--x: bad")) == "--x: bad"
    assert cli.user_error_message(FileNotFoundError("no file at /a")) == "no file at /a"
    from action_gen.data import robots

    try:
        robots.from_config({"name": "alhoa"})  # a ValueError raised in action_gen/
    except ValueError as e:
        assert cli.user_error_message(e).startswith("config.robot.name='alhoa' is not a named")
    try:
        _raise(ValueError("raised in tests/"))  # not action_gen/, configs/, launch/ ...
    except ValueError as e:
        assert cli.user_error_message(e) is None
    try:
        np.zeros(3).reshape(2)  # raised inside numpy: an internal error, traceback kept
    except ValueError as e:
        assert cli.user_error_message(e) is None


def test_a_message_that_embeds_a_traceback_keeps_its_first_and_last_line():
    message = (
        "flag --config=configs/x.py:nope: Error whilst parsing config file:\n"
        "Traceback (most recent call last):\n"
        '  File "configs/common.py", line 33, in obstacle_config\n'
        "    raise ValueError(\n"
        "ValueError: unknown config variant(s) ['nope']"
    )
    assert cli.user_error_message(cli.UserError(message)) == (
        "flag --config=configs/x.py:nope: Error whilst parsing config file: "
        "ValueError: unknown config variant(s) ['nope']"
    )


def test_run_command_exit_codes(capsys, monkeypatch):
    monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_command(lambda: _raise(cli.UserError("--workdir: no checkpoint in /x")), [])
    assert exit_info.value.code == cli.EXIT_USER_ERROR == 2
    assert capsys.readouterr().err == "error: --workdir: no checkpoint in /x\n"
    with pytest.raises(cli.UserError):  # --verbose: the traceback
        cli.run_command(lambda: _raise(cli.UserError("x")), ["--verbose"])
    monkeypatch.setenv(cli.VERBOSE_ENV, "1")
    with pytest.raises(cli.UserError):
        cli.run_command(lambda: _raise(cli.UserError("x")), [])
    monkeypatch.delenv(cli.VERBOSE_ENV)
    with pytest.raises(ZeroDivisionError):  # internal: never swallowed
        cli.run_command(lambda: 1 / 0, [])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_command(lambda: 1, [])
    assert exit_info.value.code == 1


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["-m", "action_gen.main", "--config=configs/nope.py", "--workdir=/tmp/x"],
            "error: --config: config file not found: configs/nope.py",
        ),
        (
            [
                "-m",
                "action_gen.main",
                "--config=configs/diffusion_unet_obstacle.py:smoke",
                "--workdir=/tmp/x",
                "--config.optimizer.lrr=1e-4",
            ],
            "error: --config.optimizer.lrr: configs/diffusion_unet_obstacle.py:smoke has no "
            "field 'optimizer.lrr' (did you mean optimizer.lr, optimizer, optimizer.b2?)",
        ),
        (
            ["-m", "action_gen.data.inspect", "/nonexistent"],
            "error: RLDS dataset path does not exist: /nonexistent",
        ),
        (
            ["launch/sweep.py", "--config=configs/ablation_obstacle.py:nope", "--workdir=/tmp/x"],
            "unknown config variant(s) ['nope']; use demo, runlocal or smoke",
        ),
        (  # refused before the sweep writes anything or makes its dataset
            [
                "launch/sweep.py",
                "--config=configs/ablation_obstacle.py:smoke",
                "--workdir=/nonexistent/sweep",
                "--parallel=0",
            ],
            "--parallel must be >= 1, got 0",
        ),
    ],
    ids=["config-missing", "did-you-mean", "inspect-missing", "sweep-variant", "sweep-parallel"],
)
def test_entry_points_print_one_line_and_exit_2(args, expected):
    env = dict(os.environ)
    env.pop(cli.VERBOSE_ENV, None)
    run = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(expected), lines
