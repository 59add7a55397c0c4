"""The seed's comparison, measured: regression vs discrete tokens vs diffusion vs flow.

Every method trains on the same demonstrations of the built-in obstacle task (bimodal:
the expert passes left or right at random) and is evaluated on the same seeded episodes:

  regression             U-Net, MSE on the chunk (unimodal: averages the two modes)
  tokens_greedy / _t1    256 uniform bins per action dim, a small causal transformer,
                         autoregressive over the H·A tokens (RT-2 / OpenVLA), decoded
                         greedily or at temperature 1
  diffusion_ddim1/3/10   U-Net, ε-prediction, DDIM with 1 / 3 / 10 steps
  diffusion_ddpm100      the same checkpoint, ancestral DDPM with all 100 steps
  flow_euler1/3/10       U-Net, flow matching (π0's objective), 1 / 3 / 10 Euler steps

Runs that differ only in inference-time knobs share one trained checkpoint (the sweep
trains 4 models and evaluates 10 runs). Launch:

  python launch/sweep.py --config=configs/ablation_obstacle.py:runlocal --workdir=/tmp/abl
  python launch/sweep.py --config=configs/ablation_obstacle.py:demo --workdir=/tmp/abl_demo

Variants (the arg after ':'):
  runlocal  tiny models, a few steps: checks the whole pipeline in a few minutes.
  demo      CPU scale (`make demo`'s U-Net, 1,500 steps; regression 1,000): the numbers
            in README (~30-40 min on 2 shared cores).
  (none)    DP's low-dim U-Net sizes, for an accelerator.
A single method is `get_config("demo,objective=tokens")` (objective one of regression,
tokens, diffusion, flow); that is what each run's command line passes.
Expected (the seed's claims): regression collides (mode averaging); tokens, diffusion and
flow commit to one side; tokens pay a quantization error (~1/512 of the range) and H·A
sequential model calls per chunk; diffusion needs several steps, flow fewer.
"""

import ml_collections

from configs import common

OBJECTIVES = ("regression", "tokens", "diffusion", "flow")


def _base_arg(flags: set[str], values: dict[str, str]) -> str:
    """The arg for common.obstacle_config: its own flags and key=values (not `objective`)."""
    tokens = sorted(flags) + [f"{k}={v}" for k, v in sorted(values.items()) if k != "objective"]
    return ",".join(tokens)


def get_config(arg=None):
    flags, values = common.parse_arg(arg)
    objective = values.get("objective", "diffusion")
    if objective not in OBJECTIVES:
        raise ValueError(
            f"configs/ablation_obstacle.py: unknown objective={objective!r}; use one of "
            f"{OBJECTIVES}"
        )
    base = "regression" if objective == "tokens" else objective
    config = common.obstacle_config(base, _base_arg(flags, values))
    if objective == "diffusion":
        # Trained for the default DDIM-10 sampler; the sweep varies sampler and steps.
        config.objective.sampler = "ddim"
    if "demo" in flags:
        # Fits the ~30 min budget on a SHARED 2-core CPU (make demo trains diffusion and
        # flow for 2,000 steps on an idle one); regression keeps demo's 1,000 steps.
        if objective in ("diffusion", "flow"):
            config.train.num_steps = 1_500
        config.train.checkpoint_every = 500
    if objective == "tokens":
        num_bins = ml_collections.FieldReference(256)
        config.model = ml_collections.ConfigDict()
        config.model.name = "token_head"
        config.model.num_bins = num_bins
        config.model.embed_dim = 128
        config.model.num_layers = 2
        config.model.num_heads = 4
        config.model.mlp_ratio = 4
        config.objective = ml_collections.ConfigDict()
        config.objective.name = "tokens"
        config.objective.num_bins = num_bins
        config.objective.temperature = 0.0  # greedy, as OpenVLA decodes
        # Ignored by the token sampler (H·A steps); linked so eval and objective agree.
        config.objective.num_sample_steps = config.eval.get_ref("num_sample_steps")
        if "demo" in flags:
            config.optimizer.lr = 3e-4
            config.train.num_steps = 1_500
        if "runlocal" in flags:
            config.model.embed_dim = 32
            config.model.num_layers = 1
            config.model.num_heads = 2
    return config


def get_sweep(arg=None):
    """One override dict per run: `name` (the `method` column), `config_arg` (the arg
    after ':' for that run) and dotted config overrides."""
    flags, values = common.parse_arg(arg)
    base = _base_arg(flags, values)

    def arg_for(objective: str) -> str:
        return ",".join(t for t in (base, f"objective={objective}") if t)

    runs = [
        {"name": "regression", "config_arg": arg_for("regression")},
        {"name": "tokens_greedy", "config_arg": arg_for("tokens")},
        {"name": "tokens_t1", "config_arg": arg_for("tokens"), "objective.temperature": 1.0},
    ]
    for steps in (1, 3, 10):
        runs.append(
            {
                "name": f"diffusion_ddim{steps}",
                "config_arg": arg_for("diffusion"),
                "objective.sampler": "ddim",
                "objective.num_sample_steps": steps,
            }
        )
    runs.append(
        {
            "name": "diffusion_ddpm100",
            "config_arg": arg_for("diffusion"),
            "objective.sampler": "ddpm",
            "objective.num_sample_steps": 100,
        }
    )
    for steps in (1, 3, 10):
        runs.append(
            {
                "name": f"flow_euler{steps}",
                "config_arg": arg_for("flow"),
                "objective.integrator": "euler",
                "objective.num_sample_steps": steps,
            }
        )
    return runs
