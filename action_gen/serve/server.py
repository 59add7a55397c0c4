"""Websocket policy server, wire-compatible with openpi's (`openpi_client`).

Protocol (see protocol.py for the encoding):
  connect     ws://HOST:PORT (optionally `Authorization: Api-Key <key>`); the server sends
              one binary frame of metadata: observation_spec {key: {shape, dtype}} of one
              unbatched observation, action_shape [H, A], and what else a client needs.
  request     one binary frame: the observation dict (no batch dim): in our schema
              (`observation_spec`), or, for a policy trained or imported for a robot
              (`config.robot`), exactly the dict that robot's openpi client sends (nested
              maps such as ALOHA's `images` included; data/robots.py); flow policies also
              take `rtc/prefix` [H, A] + `rtc/weights` [H] for real-time chunking.
  reply       one binary frame {"actions": [H, A] float32, "server_timing": {...}}, or a
              TEXT frame naming the problem (openpi's client raises it as an error). A bad
              request never closes the connection; a frame over `max_frame_bytes` does
              (websocket close 1009), as the limit is enforced before the frame is read.
  GET /healthz  200 "ok" (plain HTTP on the same port, no key needed).

Batching: requests from all connections go through one queue. A batcher task takes what
is queued (up to `max_batch`); while fewer requests than open connections are in hand it
waits up to `max_wait_ms` for the rest, then runs ONE sampler call for the batch in a
worker thread (so the event loop keeps receiving, and the next batch forms while this
one computes). With one client it never waits. The policy is compiled ahead of time for
the batch sizes it can see, so no request pays compilation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import http
import logging
import threading
import time

import jax
import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve

from action_gen.data import robots
from action_gen.serve import protocol

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024


def default_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to max_batch, and max_batch: a batch is padded at most ~2x."""
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


@dataclasses.dataclass
class _Request:
    observation: dict
    rtc: dict | None
    future: asyncio.Future
    received: float


class PolicyServer:
    """Serves a `sample.policy.Policy` over websockets (see the module docstring).

    Args:
      policy: the Policy (its `observation_spec`, `action_shape`, `sample_actions`).
      host: bind address; 127.0.0.1 by default (reachable from this machine only).
      port: TCP port; 0 picks a free one (see `port` after start).
      max_batch: most requests per sampler call.
      max_wait_ms: longest a request waits for others to join its batch.
      max_frame_bytes: incoming frames above this close the connection (1009).
      api_key: when set, the websocket handshake must carry `Authorization: Api-Key <key>`.
      seed: base of the per-call PRNG keys (call n uses fold_in(key(seed), n)).
      compile: compile the policy ahead of time (and warm it up) for `batch_sizes`.
      batch_sizes: the sizes to compile; default `default_batch_sizes(max_batch)`. A batch
        between two sizes is padded up to the next one.
    """

    def __init__(
        self,
        policy,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        api_key: str | None = None,
        seed: int = 0,
        compile: bool = True,
        batch_sizes: tuple[int, ...] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms} must be >= 0")
        self.policy = policy
        self.host = host
        self.port = port
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1e3
        self.max_frame_bytes = int(max_frame_bytes)
        self.api_key = api_key
        self._base_key = jax.random.key(seed)
        self._calls = 0
        self.batch_sizes: list[int] = []  # one entry per sampler call
        self._connections = 0
        self._queue: asyncio.Queue | None = None
        # One worker: sampler calls run one at a time, off the event loop.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sampler")
        if compile:
            tic = time.perf_counter()
            sizes = batch_sizes or default_batch_sizes(self.max_batch)
            if max(sizes) < self.max_batch:
                raise ValueError(f"batch_sizes {sizes} must reach max_batch={self.max_batch}")
            policy.compile(sizes)
            logger.info(
                "compiled batch sizes %s in %.1f s",
                policy.compiled_batch_sizes,
                time.perf_counter() - tic,
            )
        self.metadata = {
            "server": "action_gen",
            "observation_spec": protocol.spec_to_wire(policy.observation_spec),
            "optional_keys": list(protocol.OPTIONAL_KEYS),
            "action_shape": list(policy.action_shape),
            "action_horizon": int(policy.action_shape[0]),
            "action_dim": int(policy.action_shape[1]),
            "objective": policy.objective.name,
            "sampler": policy.objective.sampler_label,
            "model": str(policy.config.model.name),
            "num_sample_steps": int(policy.num_sample_steps),
            "rtc": bool(getattr(policy, "supports_rtc", False)),
            "max_batch": self.max_batch,
        }
        robot = getattr(policy, "robot", None)
        if robot is not None:
            self.metadata["robot"] = robot.name
            self.metadata["client_keys"] = robot.describe()
            self.metadata["default_prompt"] = policy.transforms.default_prompt
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._thread: threading.Thread | None = None

    # -- HTTP side of the handshake --------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if self.api_key:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.api_key}".encode()):
                logger.warning(
                    "rejected connection from %s: bad API key", connection.remote_address
                )
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or bad API key\n")
        return None

    # -- per connection --------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self._connections += 1
        try:
            await ws.send(protocol.pack(self.metadata))
            async for message in ws:
                received = time.perf_counter()
                try:
                    observation, rtc = self._read_request(protocol.unpack(message))
                except (protocol.ProtocolError, robots.RobotInputError) as e:
                    await ws.send(f"invalid request: {e}")
                    continue
                future = asyncio.get_running_loop().create_future()
                await self._queue.put(_Request(observation, rtc, future, received))
                try:
                    actions, timing = await future
                except Exception as e:  # the sampler failed on this batch: say so, keep serving
                    await ws.send(f"inference failed: {type(e).__name__}: {e}")
                    continue
                timing["total_ms"] = (time.perf_counter() - received) * 1e3
                await ws.send(protocol.pack({"actions": actions, "server_timing": timing}))
        except websockets.ConnectionClosed:
            pass
        finally:
            self._connections -= 1

    def _read_request(self, request) -> tuple[dict, dict | None]:
        """(one unbatched observation in our schema, rtc or None) of a decoded request."""
        rtc_shape = self.policy.action_shape if self.metadata["rtc"] else None
        if getattr(self.policy, "robot", None) is None:
            return protocol.validate_observation(
                request, self.policy.observation_spec, action_shape=rtc_shape
            )
        request, rtc = protocol.split_rtc(request, rtc_shape)
        return self.policy.observation_from_request(request), rtc

    # -- batching --------------------------------------------------------------------------

    async def _gather(self) -> list[_Request]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            # Wait only while other connections may still be about to send.
            remaining = deadline - loop.time()
            if len(batch) >= self._connections or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _infer(self, requests: list[_Request], rng) -> np.ndarray:
        """Stacks the requests into one batch and runs one sampler call (worker thread)."""
        keys = requests[0].observation.keys()
        obs = {}
        for key in keys:
            values = [r.observation[key] for r in requests]
            if isinstance(values[0], str):
                obs[key] = np.array(values, dtype=object)
            else:
                obs[key] = np.stack([np.asarray(v) for v in values])
        if requests[0].rtc is None:
            return self.policy.sample_actions(obs, rng)
        prefix = np.stack([r.rtc["prefix"] for r in requests])
        weights = np.stack([r.rtc["weights"] for r in requests])
        return self.policy.sample_actions_rtc(obs, rng, prefix=prefix, prefix_weights=weights)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            # Different request kinds (guided or not, optional pad mask or not) are
            # different programs: one call per kind.
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                kind = (r.rtc is not None, tuple(sorted(r.observation)))
                groups.setdefault(kind, []).append(r)
            for group in groups.values():
                rng = jax.random.fold_in(self._base_key, self._calls)
                self._calls += 1
                start = time.perf_counter()
                try:
                    actions = await loop.run_in_executor(self._pool, self._infer, group, rng)
                except Exception as e:
                    logger.exception("sampler call failed for a batch of %d", len(group))
                    for r in group:
                        if not r.future.done():
                            r.future.set_exception(e)
                    continue
                infer_ms = (time.perf_counter() - start) * 1e3
                self.batch_sizes.append(len(group))
                logger.info(
                    "sampler call %d: batch size %d%s, %.2f ms",
                    self._calls,
                    len(group),
                    " (rtc)" if group[0].rtc is not None else "",
                    infer_ms,
                )
                for i, r in enumerate(group):
                    if r.future.done():  # the client went away
                        continue
                    r.future.set_result(
                        (
                            np.asarray(actions[i], np.float32),
                            {
                                "infer_ms": infer_ms,
                                "queue_ms": (start - r.received) * 1e3,
                                "batch_size": len(group),
                            },
                        )
                    )

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(self) -> None:
        """Serves until `stop()` (or the task is cancelled)."""
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        self._queue = asyncio.Queue()
        batcher = asyncio.create_task(self._batch_loop())
        async with serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.max_frame_bytes,
            compression=None,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            logger.info(
                "serving %s policy on ws://%s:%d (max_batch %d, max_wait %.1f ms)",
                self.metadata["objective"],
                self.host,
                self.port,
                self.max_batch,
                self.max_wait_s * 1e3,
            )
            self._started.set()
            try:
                await self._stop
            finally:
                batcher.cancel()

    def run(self) -> None:
        """Blocking: serve in this thread until interrupted."""
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            logger.info("stopped")

    def start(self, timeout_s: float = 60.0) -> PolicyServer:
        """Serves from a background thread (tests, benchmarks); returns once listening."""
        self._thread = threading.Thread(target=self.run, name="policy-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError(f"server did not start within {timeout_s} s")
        return self

    def stop(self) -> None:
        """Stops a server started with `start` (or `serve`) and waits for its thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(
                lambda: self._stop.done() or self._stop.set_result(None)
            )
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False)
