"""An evaluation row behind the policy server, driven by openpi's own robot-side client.

    python -m action_gen.eval.served --workdir=W --episodes=100 --seed=200000 [--clients=2]

starts `python -m action_gen.main --mode=serve --workdir=W` on a free port (or talks to a
running server: --host / --port), runs the episodes, and writes `W/results_served.json`
(or --out): the in-process evaluation's figures (success with its 95% interval, the stages,
episode length, action jerk, policy call time), measured at the robot's side of the wire.

Per control step, each client does what openpi's ALOHA-sim example does (examples/aloha_sim:
env.py's `_convert_observation`, main.py), with openpi_client's own code:
  observation  the top camera's 480x640 frame through `image_tools.resize_with_pad(img, 224,
               224)` and `image_tools.convert_to_uint8`, CHW, under `images/cam_high`; the
               14 joint positions under `state` (gym-aloha's `agent_pos`); no prompt
  actions      `WebsocketClientPolicy` behind `ActionChunkBroker(action_horizon)`: a request
               every `action_horizon` steps (openpi's default 10), each step the next action
               of the returned chunk.
The simulator is envs/aloha.py's, not `gymnasium.make` as in openpi's example: the same
gym-aloha physics, layouts (`sample_box_pose(seed)`) and top frame, but only the top camera
is rendered (gym-aloha's renders three 480x640 cameras a step), episodes last 400 steps
(ACT's and the in-process rows'; gym-aloha registers 300) and the stages are kept. Episode i
has the in-process evaluation's seed i (`obstacle.episode_seeds`), so a served row and an
in-process row of one checkpoint see the same layouts.

The policy must have been trained for that client's dict (`config.robot`; e.g.
configs/diffusion_unet_aloha.py's `openpi_client` variant); the server refuses other dicts
with an error naming the key.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import threading
import time

import numpy as np
from absl import flags

from action_gen import cli
from action_gen.envs import aloha, obstacle
from action_gen.eval import evaluate, seed_splits, server_process

CLIENT_IMAGE_SIZE = 224  # openpi's aloha_sim client: resize_with_pad(img, 224, 224)
OPENPI_ACTION_HORIZON = 10  # examples/aloha_sim/main.py's default
RESULTS_FILE = "results_served.json"


def client_observation(frame: np.ndarray, agent_pos: np.ndarray) -> dict:
    """One observation as openpi's ALOHA-sim client sends it.

    Args:
      frame: [480, 640, 3] uint8, the top camera (gym-aloha's `pixels/top`).
      agent_pos: [14] joint positions (gym-aloha's `agent_pos`).
    Returns:
      {"state": [14], "images": {"cam_high": [3, 224, 224] uint8}}.
    """
    from openpi_client import image_tools  # noqa: PLC0415  (the client's own resize)

    image = image_tools.convert_to_uint8(
        image_tools.resize_with_pad(np.asarray(frame), CLIENT_IMAGE_SIZE, CLIENT_IMAGE_SIZE)
    )
    return {"state": np.asarray(agent_pos), "images": {"cam_high": np.transpose(image, (2, 0, 1))}}


class _TimedPolicy:
    """openpi_client's BasePolicy interface around a policy, timing every `infer`."""

    def __init__(self, policy):
        self._policy = policy
        self.call_s: list[float] = []

    def infer(self, obs: dict) -> dict:
        start = time.perf_counter()
        out = self._policy.infer(obs)
        self.call_s.append(time.perf_counter() - start)
        return out

    def reset(self) -> None:
        self._policy.reset()


def _run_client(task, host, port, seeds, action_horizon, max_steps, out, api_key=None):
    """One client: its own simulator worker and websocket connection, episodes `seeds`
    in order; fills `out[seed]` with that episode's record."""
    from openpi_client import action_chunk_broker, websocket_client_policy  # noqa: PLC0415

    env = aloha.make_env(task, camera=aloha.DEFAULT_CAMERA, image_size=aloha.DEFAULT_IMAGE_SIZE)
    frame_key = aloha.IMAGE_PREFIX + aloha.DEFAULT_CAMERA
    try:
        timed = _TimedPolicy(
            websocket_client_policy.WebsocketClientPolicy(host=host, port=port, api_key=api_key)
        )
        broker = action_chunk_broker.ActionChunkBroker(timed, action_horizon=action_horizon)
        for seed in seeds:
            obs = env.reset(int(seed))
            broker.reset()
            states, actions, stage, success = [obs[aloha.STATE_KEY]], [], 0, False
            calls_before = len(timed.call_s)
            for _ in range(max_steps):
                action = np.asarray(
                    broker.infer(client_observation(obs[frame_key], obs[aloha.STATE_KEY]))[
                        "actions"
                    ],
                    np.float32,
                )
                obs, reward, success, unstable = env.step(action)
                states.append(obs[aloha.STATE_KEY])
                actions.append(action)
                stage = max(stage, int(reward))
                if success or unstable:
                    break
            out[int(seed)] = {
                "success": bool(success),
                "max_stage": stage,
                "states": np.stack(states),
                "actions": np.stack(actions),
                "call_s": timed.call_s[calls_before:],
            }
            logging.info(
                "served episode %d done (seed %d): success %s, stage %d, %d steps",
                len(out), seed, success, stage, len(actions),
            )  # fmt: skip
    finally:
        env.close()


def run_served_episodes(
    task: str,
    host: str,
    port: int,
    *,
    num_episodes: int,
    seed: int,
    clients: int = 1,
    action_horizon: int = OPENPI_ACTION_HORIZON,
    max_steps: int = aloha.EPISODE_STEPS,
    api_key: str | None = None,
) -> dict:
    """Runs `num_episodes` episodes of ALOHA `task` against the server at host:port with
    `clients` concurrent openpi clients (module docstring). Returns a rollout result in
    `eval.rollout.run_rollouts`'s layout (seeds, success, max_stage, length, actions,
    policy_call_s, ...), for `eval.metrics.summarize`."""
    if clients < 1 or num_episodes < 1 or action_horizon < 1:
        raise ValueError("clients, num_episodes and action_horizon must be >= 1")
    seeds = [int(s) for s in obstacle.episode_seeds(seed, num_episodes)]
    records: dict[int, dict] = {}
    errors: list[BaseException] = []

    def worker(share):
        try:
            _run_client(task, host, port, share, action_horizon, max_steps, records, api_key)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            errors.append(e)

    threads = [
        threading.Thread(target=worker, args=(seeds[i::clients],), daemon=True)
        for i in range(min(clients, num_episodes))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    episodes = [records[s] for s in seeds]
    success = np.asarray([e["success"] for e in episodes])
    return {
        "seeds": np.asarray(seeds),
        "success": success,
        "collision": np.zeros(len(seeds), bool),
        "timeout": ~success,
        "side": np.full(len(seeds), obstacle.NO_SIDE),
        "length": np.asarray([len(e["actions"]) for e in episodes]),
        "max_stage": np.asarray([e["max_stage"] for e in episodes]),
        "num_stages": aloha.MAX_REWARD,
        "states": [e["states"] for e in episodes],
        "actions": [e["actions"] for e in episodes],
        "policy_call_s": [t for e in episodes for t in e["call_s"]],
    }


def summarize(result: dict, **settings) -> dict:
    """The served row's results.json: the in-process evaluation's summary
    (`evaluate.summarize_rollouts`) plus `settings` (task, clients, action_horizon, ...)."""
    summary = evaluate.summarize_rollouts(result)
    summary["policy_call_ms_note"] = "round trip at the client: request, server, reply"
    summary.update(settings)
    return summary


def _stored_task(workdir: str) -> str:
    """The ALOHA task of the run in `workdir` (its stored config's eval.env)."""
    from action_gen import run as run_lib  # noqa: PLC0415

    spec = str(run_lib.Run.open(workdir).config().eval.env)
    if not aloha.is_spec(spec):
        raise ValueError(
            f"{workdir}: eval.env={spec!r} is not an ALOHA task; this row drives openpi's "
            "ALOHA-sim client"
        )
    return aloha.parse_spec(spec)["task"]


def main(argv) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}")
    cli.own_logs_at_info()
    args = flags.FLAGS
    workdir = os.path.abspath(args.workdir)
    task = _stored_task(workdir)
    out = pathlib.Path(args.out or os.path.join(workdir, RESULTS_FILE))
    run = dict(
        num_episodes=args.episodes,
        seed=args.seed,
        clients=args.clients,
        action_horizon=args.action_horizon,
        max_steps=args.max_steps,
        api_key=os.environ.get("ACTION_GEN_API_KEY") or None,
    )
    start = time.time()
    if args.host:
        if args.port is None:
            raise cli.UserError("--host needs --port")
        result = run_served_episodes(task, args.host, args.port, **run)
    else:
        log = str(out.with_suffix(".server.log"))
        # At most `clients` requests are in flight: compile no larger batch at start-up.
        with server_process.serving(
            workdir, port=args.port, max_batch=args.clients, log_path=log
        ) as server:
            result = run_served_episodes(task, "127.0.0.1", server.port, **run)
    summary = summarize(
        result,
        task=task,
        client="openpi_client (examples/aloha_sim observation, ActionChunkBroker)",
        clients=args.clients,
        action_horizon=args.action_horizon,
        max_steps=args.max_steps,
        eval_seed=args.seed,
        eval_seed_split=seed_splits.split_of(args.seed),
        wall_s=round(time.time() - start, 1),
    )
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Run directory of the policy to serve.", required=True)
    flags.DEFINE_integer("episodes", 100, "Evaluation episodes.")
    flags.DEFINE_integer("seed", seed_splits.DEV_SEED, "Base seed (eval/seed_splits.py).")
    flags.DEFINE_integer("clients", 2, "Concurrent clients (simulator processes).")
    flags.DEFINE_integer(
        "action_horizon", OPENPI_ACTION_HORIZON, "Actions executed per chunk (ActionChunkBroker)."
    )
    flags.DEFINE_integer("max_steps", aloha.EPISODE_STEPS, "Control steps per episode.")
    flags.DEFINE_string("host", None, "A running server's host (default: start one).")
    flags.DEFINE_integer("port", None, "A running server's port (with --host).")
    flags.DEFINE_string("out", None, f"Results file (default WORKDIR/{RESULTS_FILE}).")
    cli.absl_main(main, __doc__, module=__name__)
