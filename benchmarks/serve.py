"""Load generator for the policy server: loopback latency and throughput vs concurrency.

  .venv/bin/python benchmarks/serve.py --workdir=/tmp/flow_demo [--clients 1,8,32]
      [--requests_per_client 30] [--max_batch 32] [--max_wait_ms 2]

Starts `python -m action_gen.main --mode=serve` on a free loopback port as a separate
process (so client threads do not share its GIL), waits for /healthz, then for each
concurrency level C runs C closed-loop clients (each: 2 warm-up requests, then
`requests_per_client` timed ones, one at a time) speaking the openpi wire format.
Prints one JSON object per run with, per C:
  e2e_p50_ms / e2e_p99_ms     client-measured request -> reply latency
  requests_per_s              completed timed requests / wall time
  infer_p50_ms                the sampler call the request rode in (server_timing)
  server_overhead_p50_ms      server_timing total_ms - infer_ms (decode, validate, queue,
                              batch, hand-off to the worker thread; excludes reply encode)
  e2e_minus_infer_p50_ms      client latency - infer_ms (adds encode, loopback, decode)
  mean_batch_size             over the timed requests
`benchmark` is also the server section of benchmarks/gpu_suite.py.
"""

import json
import os
import threading
import time

import numpy as np
import websockets.sync.client

from action_gen import cli
from action_gen.eval import server_process
from action_gen.serve import protocol


def _request(spec: dict, rng: np.random.Generator) -> dict:
    obs = {}
    for key, entry in spec.items():
        shape, dtype = tuple(entry["shape"]), entry["dtype"]
        if dtype == "string":
            obs[key] = "go around the obstacle"
        elif dtype == "uint8":
            obs[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            obs[key] = rng.uniform(-1, 1, shape).astype(dtype)
    return obs


def _run_level(port: int, clients: int, requests_per_client: int) -> dict:
    barrier = threading.Barrier(clients + 1)
    latencies, infer, server_total, batch = [], [], [], []
    lock = threading.Lock()
    errors = []

    def client(i: int) -> None:
        try:
            rng = np.random.default_rng(i)
            with websockets.sync.client.connect(
                f"ws://127.0.0.1:{port}", compression=None, max_size=None
            ) as ws:
                meta = protocol.unpack(ws.recv())
                frames = [protocol.pack(_request(meta["observation_spec"], rng)) for _ in range(4)]
                for k in range(2):  # warm-up
                    ws.send(frames[k])
                    ws.recv()
                barrier.wait()
                for k in range(requests_per_client):
                    tic = time.perf_counter()
                    ws.send(frames[k % len(frames)])
                    reply = ws.recv()
                    elapsed = (time.perf_counter() - tic) * 1e3
                    if isinstance(reply, str):
                        raise RuntimeError(reply)
                    timing = protocol.unpack(reply)["server_timing"]
                    with lock:
                        latencies.append(elapsed)
                        infer.append(timing["infer_ms"])
                        server_total.append(timing["total_ms"])
                        batch.append(timing["batch_size"])
        except Exception as e:  # reported after the run
            errors.append(repr(e))
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[:3]}")
    lat, inf, tot = np.array(latencies), np.array(infer), np.array(server_total)
    return {
        "clients": clients,
        "requests": len(lat),
        "e2e_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "e2e_p99_ms": round(float(np.percentile(lat, 99)), 3),
        "requests_per_s": round(len(lat) / wall, 1),
        "infer_p50_ms": round(float(np.percentile(inf, 50)), 3),
        "server_overhead_p50_ms": round(float(np.percentile(tot - inf, 50)), 3),
        "e2e_minus_infer_p50_ms": round(float(np.percentile(lat - inf, 50)), 3),
        "mean_batch_size": round(float(np.mean(batch)), 2),
    }


def benchmark(
    workdir: str,
    clients=(1, 8, 32),
    requests_per_client: int = 30,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    startup_timeout_s: float = 600,
) -> dict:
    """Serves `workdir` in a child process and runs each concurrency level against it."""
    with server_process.serving(
        workdir, max_batch=max_batch, max_wait_ms=max_wait_ms, startup_timeout_s=startup_timeout_s
    ) as server:
        levels = [_run_level(server.port, int(c), requests_per_client) for c in clients]
    startup_s = server.startup_s
    return {
        "workdir": os.path.abspath(workdir),
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "server_startup_s": round(startup_s, 1),
        "levels": levels,
    }


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="trained run (checkpoint) to serve")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests_per_client", type=int, default=30)
    parser.add_argument("--max_batch", type=int, default=32)
    parser.add_argument("--max_wait_ms", type=float, default=2.0)
    parser.add_argument("--startup_timeout_s", type=float, default=600)
    args = parser.parse_args()
    from action_gen import run as run_lib  # noqa: PLC0415

    run_lib.Run.open(args.workdir, role="--workdir")  # no checkpoint: one line, no server
    result = benchmark(
        args.workdir,
        [int(c) for c in args.clients.split(",")],
        args.requests_per_client,
        args.max_batch,
        args.max_wait_ms,
        args.startup_timeout_s,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
