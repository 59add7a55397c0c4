"""The learning check: trained policies must actually learn the bimodal obstacle task.

Every other end-to-end test trains a couple of steps and checks plumbing; this one trains
three small policies to convergence on the same 100 demonstrations and evaluates 50
episodes each (fixed seeds), so a silent regression in the data stream, the transforms, the
objectives, the train step or the sampler shows up as a failed learning curve:
  diffusion (x̂0-prediction, DDIM 10) and flow (10 Euler steps), 800 steps each:
      success ≥ 90%, collisions ≤ 5%, each side ≥ 25%   (measured: 100 / 0 / 62-38% and
      98 / 2 / 52-46% on the 2-core CPU; BUILD_NOTES, issue #28);
  regression (MSE), 300 steps: collides in ≥ 50% of episodes (it averages the modes into
      the obstacle; measured 100%).
U-Net (32, 64, 128), batch 64. The runs share one subprocess compiled with XLA's normal
optimizations (the test session's `-O0` flags, tests/conftest.py, make these programs run
about 3x slower, and here run time dominates compile time).
"""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow
STEPS = {"diffusion": 800, "flow": 800, "regression": 300}


def _config(objective: str, dataset_dir: str) -> ml_collections.ConfigDict:
    from configs import common

    config = common.obstacle_config(objective, "demo")
    config.data.dataset_dir = dataset_dir
    config.data.num_demo_episodes = 100
    config.data.batch_size = 64
    config.model.down_dims = (32, 64, 128)
    config.model.time_embed_dim = 32
    if objective == "diffusion":
        config.objective.prediction_type = "sample"  # learns in 800 steps; ε needs ~2.5×
    config.train.num_steps = STEPS[objective]
    config.train.checkpoint_every = STEPS[objective]
    config.train.async_checkpoints = False
    config.optimizer.warmup_steps = 50
    config.eval.num_episodes = 50
    config.eval.plot = False
    return config


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The three runs in one subprocess (one interpreter start, one TensorFlow and JAX
    import, the dataset written once and reused)."""
    root = tmp_path_factory.mktemp("learning")
    env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO)
    result_file = root / "results.json"
    run = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(root), str(result_file)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(result_file.read_text())
    assert sorted(out) == sorted(STEPS)
    for objective, result in out.items():
        shown = {k: v for k, v in result.items() if "rate" in k or "fraction" in k}
        print(objective, shown)  # the measured figures, with `pytest -s`
    return out


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_generative_policies_learn_both_modes(results, objective):
    r = results[objective]
    assert r["success_rate"] >= 0.90, r
    assert r["collision_rate"] <= 0.05, r
    assert min(r["mode_left_fraction"], r["mode_right_fraction"]) >= 0.25, r


def test_regression_averages_the_modes_into_the_obstacle(results):
    assert results["regression"]["collision_rate"] >= 0.5, results["regression"]


if __name__ == "__main__":
    # The fixture's subprocess: ROOT RESULT_JSON. Each objective trains in ROOT/<objective>
    # on the demos in ROOT/dataset (written by the first run).
    from action_gen import main

    root, result_json = sys.argv[1:]
    out = {}
    for objective in STEPS:
        config = _config(objective, os.path.join(root, "dataset"))
        result = main.run(config, os.path.join(root, objective), "train_and_eval")
        out[objective] = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    with open(result_json, "w") as f:
        json.dump(out, f)
