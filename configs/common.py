"""Shared config builders (import only ml_collections and the schema, so configs load
instantly)."""

import ml_collections

from action_gen import config_schema


def parse_arg(arg: str | None) -> tuple[set[str], dict[str, str]]:
    """'demo,seed=3' -> ({'demo'}, {'seed': '3'})."""
    flags, values = set(), {}
    for token in (arg or "").split(","):
        token = token.strip()
        if not token:
            continue
        if "=" in token:
            key, value = token.split("=", 1)
            values[key.strip()] = value.strip()
        else:
            flags.add(token)
    return flags, values


def obstacle_config(objective: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """A U-Net policy with objective `objective` on the built-in obstacle task.

    Variants: none (DP's low-dim sizes), 'demo' (CPU scale, `make demo`), 'runlocal' /
    'smoke' (tiny, seconds).
    """
    flags, values = parse_arg(arg)
    unknown = flags - {"demo", "runlocal", "smoke"}
    if unknown:
        raise ValueError(
            f"unknown config variant(s) {sorted(unknown)}; use demo, runlocal or smoke"
        )
    if "smoke" in flags:  # every config's name for its few-second check: here runlocal
        flags = (flags - {"smoke"}) | {"runlocal"}

    # Every field at its schema default (action_gen/config_schema.py); set here: what differs.
    config = config_schema.base_config()
    config.seed = int(values.get("seed", 0))

    # Shared sizes, linked so a sweep over the horizon changes data, model and eval.
    obs_horizon = ml_collections.FieldReference(2)
    action_horizon = ml_collections.FieldReference(16)
    num_sample_steps = ml_collections.FieldReference(10)
    # Clip the sampled chunk to [-1, 1], the demos' range under min-max normalization
    # (diffusion: x̂_0 at every step; flow: the final chunk). Linked to eval.clip_sample,
    # which also overrides a stored checkpoint's value in --mode=eval.
    clip_sample = ml_collections.FieldReference(True)

    # data: the schema's defaults are the obstacle task's (200 demos, minmax: DP's choice,
    # the sampler clips to [-1, 1]).
    config.data.obs_horizon = obs_horizon
    config.data.action_horizon = action_horizon

    config.model = ml_collections.ConfigDict()
    config.model.name = "unet1d"
    config.model.down_dims = (256, 512, 1024)
    config.model.kernel_size = 5
    config.model.n_groups = 8
    config.model.time_embed_dim = 256

    config.objective = ml_collections.ConfigDict()
    config.objective.name = objective
    if objective == "diffusion":
        config.objective.num_train_steps = 100
        config.objective.schedule = "squaredcos_cap_v2"
        config.objective.prediction_type = "epsilon"
        config.objective.sampler = "ddim"
        config.objective.eta = 0.0
        config.objective.clip_sample = clip_sample
    if objective == "flow":
        # t = 0 noise, t = 1 data; the model sees t * time_scale (diffusion's k range).
        config.objective.time_distribution = "beta"  # π0's, emphasises the noisy end
        config.objective.time_scale = 100.0
        config.objective.integrator = "euler"  # π0: 10 Euler steps
        config.objective.clip_sample = clip_sample
    config.objective.num_sample_steps = num_sample_steps

    # optimizer, train, mesh: the schema's defaults (DP's AdamW recipe, EMA power 0.75).

    config.eval.obs_horizon = obs_horizon
    config.eval.num_sample_steps = num_sample_steps
    if "clip_sample" in config.objective:
        config.eval.clip_sample = clip_sample

    if "demo" in flags:
        config.model.down_dims = (64, 128, 256)
        config.model.time_embed_dim = 64
        config.data.batch_size = 128
        config.optimizer.lr = 1e-3
        config.optimizer.warmup_steps = 100
        # Regression fits the (unimodal) mean quickly; its loss is flat well before 1k
        # steps. Diffusion and flow need the longer run to separate the modes sharply.
        config.train.num_steps = 2_000 if objective in ("diffusion", "flow") else 1_000
        config.train.log_every = 100
        config.train.checkpoint_every = 1_000
    if "runlocal" in flags:
        config.data.num_demo_episodes = 12
        config.data.batch_size = 16
        config.data.shuffle_buffer = 256
        config.model.down_dims = (16, 32)
        config.model.time_embed_dim = 16
        config.train.num_steps = 4
        config.train.log_every = 2
        config.train.checkpoint_every = 2
        config.train.async_checkpoints = False
        config.optimizer.warmup_steps = 2
        config.eval.num_episodes = 4
        num_sample_steps.set(3)
    return config


# The π0 expert's own input/output projections (not transformer layers).
PI0_HEADS = "state_proj|action_in_proj|time_mlp_in|time_mlp_out|action_out"
FINETUNE_VARIANTS = {"lora", "frozen_backbone"}


def pi0_finetune_layout(config, flags, frozen_dtype: str = "") -> None:
    """Fills `config.lora` (the schema's default: rank 0, off) and
    `optimizer.{trainable, frozen_dtype}` for the fine-tuning variant in `flags`:
      lora             LoRA (rank 16, alpha 16) on every attention (q, kv, out) and MLP
                       (gate_up, down) kernel of the backbone and the expert; the expert's
                       input/output projections train fully, all other base weights frozen.
      frozen_backbone  the backbone (ViT, image projection, token embedding, backbone
                       layers) frozen; the expert and its projections train.
      (neither)        full fine-tuning.
    `frozen_dtype` holds the frozen leaves (e.g. "bfloat16"; "" keeps float32). lora.targets
    (the schema's) matches per-layer (backbone_0/q/kernel) and scanned (layers/backbone/q/
    kernel [L, I, O]) kernels."""
    if {"lora", "frozen_backbone"} <= set(flags):
        raise ValueError("choose one of lora, frozen_backbone")
    if "lora" in flags:
        config.lora.rank = 16
        config.optimizer.trainable = f"^({PI0_HEADS})/"
        config.optimizer.frozen_dtype = frozen_dtype
    if "frozen_backbone" in flags:
        config.optimizer.trainable = rf"(^|/)(expert[^/]*|{PI0_HEADS})/"
        config.optimizer.frozen_dtype = frozen_dtype


def robot_section(name: str = "") -> ml_collections.ConfigDict:
    """`config.robot`: a robot adapter (action_gen/data/robots.py) by `name` ("" = our own
    layout), every other field empty = the named entry's value; set any of them to override
    it, or all of cameras / state / state_dims / action_dim for a robot of your own:
      cameras            "slot=client key,..."             optional_cameras  "k1,k2"
      state              "key1,key2" (concatenated)        state_dims        "7,1"
      action_dim         int                               delta_action_dims "6,-1,6,-1"
      joints             none | aloha_pi                   image_layout      hwc_or_chw | chw
      default_prompt     text of a request / episode without an instruction
      dataset            "client key=dataset feature,...": where a dataset keeps each part
                         ("actions" and "prompt" for the action and instruction features)
    """
    robot = config_schema.section("robot")
    robot.name = name
    return robot
