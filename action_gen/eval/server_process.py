"""The policy server as a child process: `python -m action_gen.main --mode=serve` on a free
loopback port, up (its /healthz answers) for the duration of a `with` block, stopped after.
Used where the server is driven from outside, as a robot would drive it: the load generator
(benchmarks/serve.py: client threads must not share the server's GIL) and the served
evaluation (eval/served.py: openpi's client classes against the real server). Standard
library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class ServerProcess:
    proc: subprocess.Popen
    port: int
    startup_s: float  # from the start of the process until /healthz answered


@contextlib.contextmanager
def serving(
    workdir: str,
    *,
    port: int | None = None,
    max_batch: int = 8,
    max_wait_ms: float = 2.0,
    log_path: str | None = None,
    startup_timeout_s: float = 300.0,
):
    """Serves the checkpoint in `workdir` in a child process (port: a free one when None;
    its output to `log_path`, else discarded) and yields a `ServerProcess` once /healthz
    answers. Raises RuntimeError when the server exits first, TimeoutError after
    `startup_timeout_s`."""
    port = port or free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "action_gen.main", "--mode=serve", f"--workdir={workdir}",
         f"--port={port}", f"--max_batch={max_batch}", f"--max_wait_ms={max_wait_ms}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    try:
        tic = time.perf_counter()
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the policy server for {workdir} exited with status {proc.returncode}"
                    + (f"; see {log_path}" if log_path else "")
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the policy server for {workdir} did not start in "
                        f"{startup_timeout_s:.0f} s"
                    ) from e
                time.sleep(0.5)
        yield ServerProcess(proc, port, time.perf_counter() - tic)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log is not subprocess.DEVNULL:
            log.close()
