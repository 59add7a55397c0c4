"""Multi-host start-up and preemption signals, on JAX's own multi-controller runtime.

Every host runs the same program (one process per host, or per GPU); the processes meet
at a coordinator (`jax.distributed.initialize`) and from then on every jitted step is one
SPMD program over the global mesh. Where the coordinator comes from, in order:

1. explicit flags: `--coordinator=host:port --num_processes=N --process_id=i`;
2. SLURM (`srun`, one task per node): coordinator = first host of $SLURM_JOB_NODELIST,
   port `DEFAULT_PORT`, N = $SLURM_NTASKS, i = $SLURM_PROCID;
3. Cloud TPU pod VMs: `jax.distributed.initialize()` without arguments (JAX reads the
   worker list from the TPU metadata);
4. otherwise one process (nothing to initialise).

Preemption: `PreemptionWatcher` turns SIGTERM into a flag the training loop polls after
each step; the loop then saves, waits for the write and returns, so the job exits 0.
With several processes the decision must be collective (every process saves the same
step), so it uses JAX's preemption sync point instead (the coordination service sees
the SIGTERM and picks a step every process reaches).
"""

import logging
import os
import re
import signal
import threading

DEFAULT_PORT = 12345


def parse_slurm_nodelist(nodelist: str) -> list[str]:
    """Expands a SLURM host list: "gpu[01-03,7],login1" → [gpu01, gpu02, gpu03, gpu7, login1].

    Zero-padding of ranges is kept ("[08-10]" → 08, 09, 10).
    """
    hosts: list[str] = []
    # Split on commas that are not inside brackets.
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", item)
        if not match:
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{n:0{width}d}{suffix}" for n in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{part}{suffix}")
    if not hosts:
        raise ValueError(f"SLURM_JOB_NODELIST: no hosts in {nodelist!r}")
    return hosts


def slurm_settings(env=None, port: int = DEFAULT_PORT) -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) under a multi-task SLURM step, else None."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
        return None
    num_processes = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")))
    if num_processes <= 1:
        return None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise ValueError("SLURM: SLURM_JOB_NODELIST is not set; pass --coordinator instead")
    return f"{parse_slurm_nodelist(nodelist)[0]}:{port}", num_processes, int(env["SLURM_PROCID"])


def tpu_pod_detected(env=None) -> bool:
    """True on a multi-host Cloud TPU slice (the TPU VM runtime sets the worker list)."""
    env = os.environ if env is None else env
    hostnames = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hostnames.split(",") if h]) > 1


def initialize_from_env(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    env=None,
    port: int = DEFAULT_PORT,
) -> bool:
    """Joins the multi-process runtime if this is a multi-process job; see the module doc.

    Must run before anything touches a JAX backend. Returns True when
    `jax.distributed.initialize` was called.
    """
    import jax  # noqa: PLC0415 - the command line imports this lazily

    env = os.environ if env is None else env
    explicit = (coordinator, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError(
                "--coordinator, --num_processes and --process_id must be given together "
                f"(got coordinator={coordinator!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r})"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} not in [0, {num_processes})")
        settings = (coordinator, num_processes, process_id)
    else:
        settings = slurm_settings(env, port)
    if settings is not None:
        coordinator, num_processes, process_id = settings
        logging.info(
            "jax.distributed: process %d of %d, coordinator %s",
            process_id,
            num_processes,
            coordinator,
        )
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
        )
        return True
    if tpu_pod_detected(env):
        logging.info("jax.distributed: Cloud TPU pod detected")
        jax.distributed.initialize()
        return True
    return False


class PreemptionWatcher:
    """Context manager: did this job get SIGTERM (the preemption notice)?

    One process: a SIGTERM handler sets a flag (the previous handler is restored on
    exit). Several processes: `multihost_utils.reached_preemption_sync_point`, which is
    True on every process at the same step once any of them was signalled.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._multi = False

    def __enter__(self):
        return self.start()

    def start(self) -> "PreemptionWatcher":
        """Starts watching (installs the SIGTERM handler in a single-process job)."""
        import jax  # noqa: PLC0415

        self._multi = jax.process_count() > 1
        # Python handlers can only be set from the main thread (tests may train in others).
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM: finishing the current step, then checkpointing")
        self._flag.set()

    def should_stop(self, step: int) -> bool:
        """True when the loop should save `step` and return (polled after each step)."""
        if self._multi:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._flag.is_set()

    def stop(self) -> None:
        """Restores the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __exit__(self, *exc):
        self.stop()
        return False


def process_zero_first(fn, name: str):
    """`fn()` on process 0, then (after a barrier) on the others: for one-time set-up
    such as writing the built-in dataset, which several processes must not race on."""
    import jax  # noqa: PLC0415

    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils  # noqa: PLC0415

    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"process_zero_first:{name}")
    return result if jax.process_index() == 0 else fn()
