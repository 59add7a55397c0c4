"""The front door every command shares: user errors as one line, quiet third-party logs,
and progress that reads well in a terminal and in a log file.

User errors. A command's `main` runs under `run_command(main)`: an exception that is the
user's to fix — a missing path, a bad flag or config field, a malformed dataset — prints
one line, `error: <message>`, on stderr and exits with status 2 (a message that lists a
dataset's features keeps its lines: they are the help). That is any
FileNotFoundError / NotADirectoryError / PermissionError / `UserError` / absl usage or flag
error, and any ValueError or KeyError raised by this project's own code (the project names
the file, key or field in those messages). Anything else — a bug, an error raised inside
JAX, TensorFlow or orbax — keeps its full traceback. `--verbose` on the command line, or
ACTION_GEN_VERBOSE=1 in the environment, shows the traceback for every error.

Logs. `quiet_logs()` (run before TensorFlow or JAX load) keeps warnings and errors of
TensorFlow's C++ core, TFDS, orbax, etils and JAX, and this project's own INFO lines.

Progress. `progress(total, desc)` is a tqdm bar on a terminal and, on a non-terminal
stream (CI logs, `> run.log`), one line every 5% (and at the end) instead of redrawing.
"""

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable

VERBOSE_ENV = "ACTION_GEN_VERBOSE"
EXIT_USER_ERROR = 2
_THIRD_PARTY_LOGGERS = ("absl", "jax", "orbax", "tensorflow", "tensorflow_datasets", "etils")
_OWN_CODE = ("action_gen", "configs", "launch", "benchmarks")
# The repository (or installed package's parent): own code is under it, by path prefix, so
# a checkout that is itself named "action_gen" does not make its venv's numpy "ours".
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UserError(Exception):
    """An error the user fixes (a path, a flag, a field); printed as one line."""


def verbose(argv: Iterable[str] | None = None) -> bool:
    """Whether tracebacks are wanted: `--verbose` in `argv` (default sys.argv) or
    ACTION_GEN_VERBOSE set to a true value."""
    argv = sys.argv if argv is None else argv
    env = os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")
    return env or any(a in ("--verbose", "--verbose=true", "--verbose=1") for a in argv)


def strip_verbose(argv: list[str]) -> list[str]:
    """`argv` without the --verbose flag (for parsers that do not define it)."""
    return [a for a in argv if a not in ("--verbose", "--verbose=true", "--verbose=1")]


class _BenignOrbaxWarnings(logging.Filter):
    """Drops orbax's warnings about options it adjusts itself for a read-only manager (every
    restore of a served policy would print three)."""

    NOISE = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


def quiet_logs() -> None:
    """Third-party logs at WARNING, this project's at INFO; TensorFlow's C++ banner off
    (action_gen/__init__.py). Call at the start of a command, and again after absl's
    app.run has set up its logging (`own_logs_at_info`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in _THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging  # noqa: PLC0415

        absl_logging.set_verbosity(absl_logging.WARNING)  # the "absl" logger: orbax, TFDS
    except ImportError:  # pragma: no cover - absl is a dependency
        pass
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _BenignOrbaxWarnings) for f in absl_logger.filters):
        absl_logger.addFilter(_BenignOrbaxWarnings())
    own_logs_at_info()


def own_logs_at_info() -> None:
    """The root logger (this project's `logging.info` lines) at INFO."""
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)


def _raised_by_our_code(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc`'s traceback is this project's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    path = os.path.abspath(frames[-1].filename)
    return any(path.startswith(os.path.join(_ROOT, part) + os.sep) for part in _OWN_CODE)


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, or None when `exc` is an internal error."""
    try:
        from absl import app, flags  # noqa: PLC0415

        absl_errors = (app.UsageError, flags.Error)
    except ImportError:  # pragma: no cover
        absl_errors = ()
    if isinstance(exc, UserError | NotADirectoryError | PermissionError | FileNotFoundError):
        message = str(exc)
    elif absl_errors and isinstance(exc, absl_errors):
        message = str(exc)
    elif isinstance(exc, ValueError | KeyError) and _raised_by_our_code(exc):
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    else:
        return None
    message = str(message).strip()
    lines = message.splitlines()
    if any(line.lstrip().startswith('File "') for line in lines):
        # A message that embeds a traceback (ml_collections' config_flags does, for an error
        # raised inside a config file): its first line and the exception it ends with.
        message = f"{lines[0].strip()} {lines[-1].strip()}"
    first = message.splitlines()[0] if message else type(exc).__name__
    # Multi-line messages (a dataset's feature listing) keep their lines: they are the help.
    return message if len(message.splitlines()) > 1 and len(first) < 200 else first


def run_command(main: Callable[[], object], argv: list[str] | None = None) -> None:
    """Runs `main()` (its return value: the exit status, None for 0) with user errors as
    one line on stderr and exit status 2 (module docstring)."""
    try:
        status = main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the front door decides what the user sees
        message = user_error_message(e)
        if message is None or verbose(argv):
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(0 if status is None else int(status))


class _LinePrinter:
    """tqdm's interface on a non-terminal stream: a line every `every` of the total."""

    def __init__(self, total: int, desc: str, initial: int = 0, every: float = 0.05, file=None):
        self.total, self.desc, self.n = int(total), desc, int(initial)
        self.file = file or sys.stderr
        self.every = max(1, int(round(self.total * every))) if self.total else 1
        self.postfix = ""
        self._next = (self.n // self.every + 1) * self.every

    def update(self, count: int = 1) -> None:
        self.n += count
        if self.n >= self._next or self.n == self.total:
            self._print()
            self._next = (self.n // self.every + 1) * self.every

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _print(self) -> None:
        share = f"{100 * self.n / self.total:3.0f}%" if self.total else ""
        extra = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {share} {self.n}/{self.total}{extra}", file=self.file, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, desc: str, *, initial: int = 0, disable: bool = False, file=None):
    """A progress bar (tqdm) on a terminal, a line every 5% otherwise; `update(n)`,
    `set_postfix(**kw)`, `close()`."""
    stream = file or sys.stderr
    if disable:
        return _LinePrinter(0, desc, file=open(os.devnull, "w"))  # noqa: SIM115
    if getattr(stream, "isatty", lambda: False)():
        import tqdm  # noqa: PLC0415

        return tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=stream)
    return _LinePrinter(total, desc, initial=initial, file=stream)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the project's commands: a usage error is a `UserError` (one line, exit
    status 2 under `run_command`), and `--verbose` is defined."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--verbose",
            action="store_true",
            help=f"show the traceback of a user error (or set {VERBOSE_ENV}=1)",
        )

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def absl_main(main: Callable[[list[str]], object], doc: str, module: str = "__main__") -> None:
    """Runs an absl-flags program's `main(argv)` (its flags defined in `module`) behind the
    front door: `--help` prints `doc` and the flags (exit 0), a flag error or a user error
    is one line with exit status 2."""
    from absl import flags  # noqa: PLC0415

    quiet_logs()
    argv = list(sys.argv)

    def start():
        if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
            print(doc)
            print(flags.FLAGS.module_help(sys.modules[module]))
            print(f"  --verbose: the traceback of a user error (or {VERBOSE_ENV}=1)")
            return 0
        try:
            rest = flags.FLAGS(strip_verbose(argv))
        except flags.Error as e:
            raise UserError(str(e)) from e
        return main(rest)

    run_command(start, argv)
