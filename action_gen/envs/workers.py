"""Simulators in spawned worker processes: one serve loop, one client, one fan-out.

Why workers: the MuJoCo-based simulators render with EGL (Mesa's llvmpipe here) and
dm-control loads its renderer at import; they and TensorFlow cannot share a process (both
bundle LLVM; measured: importing TensorFlow after an EGL context exists, or rendering after
TensorFlow is loaded, segfaults, and the other order aborts at exit), while training and
evaluation run where TensorFlow is loaded. A worker is a fresh `spawn`ed process that never
imports TensorFlow; several of them also run (and render) in parallel. Observations cross a
pipe (a 480x640 frame is 0.9 MB, small next to rendering it).

Protocol: the worker builds `factory(**kwargs)` and answers ("ok", (task,
max_episode_steps)) or ("error", message); then, for each ("method", args) it receives, it
answers ("ok", getattr(env, method)(*args)) or ("error", "<Type>: message"), until
("close", ()).

A simulator module subclasses `WorkerEnv` with its `label` (named in errors), a
`crash_hint` (the likely cause of a worker that died by a signal) and its extra methods
(`expert_action`, `scripted_demo`, ...); `call_all` steps a list of envs, local or remote,
with every worker running before any is awaited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def serve(conn, factory: Callable[..., Any], kwargs: dict) -> None:
    """Worker loop (module docstring's protocol) around `factory(**kwargs)`."""
    try:
        env = factory(**kwargs)
        conn.send(("ok", (env.task, env.max_episode_steps)))
    except Exception as e:  # noqa: BLE001  (reported to the parent, which raises it)
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):  # the parent exited without close()
            env.close()
            return
        if method == "close":
            env.close()
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", getattr(env, method)(*args)))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", f"{type(e).__name__}: {e}"))


class WorkerEnv:
    """An env built by `factory(**kwargs)` in a spawned worker process, with its methods.

    Subclasses name the simulator (`label`), the likely cause of a crash (`crash_hint`), and
    forward their extra methods with `_call`. Errors raised in the worker come back as
    ValueError("<label> worker: <Type>: message"); a worker that died raises RuntimeError
    naming its exit code.
    """

    label = "simulator"
    crash_hint = "rendering in a process that imported TensorFlow"

    def __init__(self, factory: Callable[..., Any], **kwargs):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fork would inherit TensorFlow
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=serve, args=(child, factory, kwargs), daemon=True)
        self._process.start()
        child.close()
        self.task, self.max_episode_steps = self._receive()

    def _receive(self):
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._process.join(timeout=5)
            code = self._process.exitcode
            why = (
                f"a crash, typically {self.crash_hint}: spawned workers re-import the main "
                "script, so a script that imports TensorFlow at module level must do it "
                "under `if __name__ == '__main__':`"
                if code is not None and code < 0
                else "its error is printed above; a script that starts workers must keep "
                "its own code under `if __name__ == '__main__':`"
            )
            raise RuntimeError(
                f"the {self.label} worker process died (exit code {code}): {why}"
            ) from None
        if status == "error":
            raise ValueError(f"{self.label} worker: {value}")
        return value

    def _send(self, method: str, *args):
        self._conn.send((method, args))

    def _call(self, method: str, *args):
        self._send(method, *args)
        return self._receive()

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        return self._call("reset", int(seed))

    def step(self, action: np.ndarray) -> tuple:
        return self._call("step", np.asarray(action, np.float32))

    def close(self):
        if self._process.is_alive():
            try:
                self._call("close")
            except (EOFError, OSError):
                pass
            self._process.join(timeout=10)
        self._conn.close()


def call_all(envs: list, method: str, args: list[tuple]) -> list:
    """`getattr(env, method)(*a)` for every env; worker envs all start before any is
    awaited, so their simulators (and renderers) run in parallel."""
    remote = [isinstance(env, WorkerEnv) for env in envs]
    for env, a, is_remote in zip(envs, args, remote, strict=True):
        if is_remote:
            env._send(method, *a)
    return [
        env._receive() if is_remote else getattr(env, method)(*a)
        for env, a, is_remote in zip(envs, args, remote, strict=True)
    ]
