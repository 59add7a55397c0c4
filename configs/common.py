"""Shared config builders (imports only ml_collections, so configs load instantly)."""

import ml_collections


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

    config = ml_collections.ConfigDict()
    config.seed = int(values.get("seed", 0))

    # Shared sizes, linked so a sweep over the horizon changes data, model and eval.
    obs_horizon = ml_collections.FieldReference(2)
    action_horizon = ml_collections.FieldReference(16)
    num_sample_steps = ml_collections.FieldReference(10)
    # Clip the sampled chunk to [-1, 1], the demos' range under min-max normalization
    # (diffusion: x̂_0 at every step; flow: the final chunk). Linked to eval.clip_sample,
    # which also overrides a stored checkpoint's value in --mode=eval.
    clip_sample = ml_collections.FieldReference(True)

    config.data = ml_collections.ConfigDict()
    config.data.dataset_dir = ""  # empty: <workdir>/dataset
    config.data.builtin_task = "obstacle"  # generate demos there if missing ('' to disable)
    config.data.num_demo_episodes = 200
    config.data.demo_seed = 0
    config.data.obs_horizon = obs_horizon
    config.data.action_horizon = action_horizon
    config.data.batch_size = 256
    config.data.shuffle_buffer = 20_000
    config.data.state_norm = "minmax"
    config.data.action_norm = "minmax"  # DP's choice: the sampler clips to [-1, 1]

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

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 1e-4
    config.optimizer.warmup_steps = 500
    config.optimizer.b1 = 0.95
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 1e-6
    config.optimizer.grad_clip_norm = 1.0
    config.optimizer.final_lr_fraction = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 20_000
    config.train.log_every = 100
    config.train.checkpoint_every = 2_000
    config.train.keep_checkpoints = 3
    config.train.async_checkpoints = True
    # Resume on data whose fingerprint differs from the checkpoint's (normalized with the
    # checkpoint's stats); refused by default.
    config.train.allow_dataset_change = False
    config.train.ema_power = 0.75
    config.train.ema_max_decay = 0.9999
    config.train.grad_accum_steps = 1  # micro-batches per update (divides batch_size)
    config.train.compute_dtype = "float32"  # or "bfloat16": bf16 compute, fp32 weights
    config.train.remat = "none"  # none | full | dots: recompute the forward in backward

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.rules = "fsdp"  # logical-axis rule set (train/sharding.py RULE_SETS)
    config.mesh.fsdp_min_size = 2**16  # params with fewer elements stay replicated

    config.eval = ml_collections.ConfigDict()
    config.eval.env = "obstacle"
    config.eval.num_episodes = 100
    config.eval.seed = 100_000  # disjoint from the demo seeds
    config.eval.obs_horizon = obs_horizon
    config.eval.action_exec_horizon = 8  # execute Ta of the H planned actions, re-plan
    config.eval.num_sample_steps = num_sample_steps
    if "clip_sample" in config.objective:
        config.eval.clip_sample = clip_sample
    config.eval.use_ema = True
    config.eval.plot = True

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
    """Declares `config.lora` (rank 0: off) and `optimizer.{trainable, frozen_dtype}`, and
    fills them for the fine-tuning variant in `flags`:
      lora             LoRA (rank 16, alpha 16) on every attention (q, kv, out) and MLP
                       (gate_up, down) kernel of the backbone and the expert; the expert's
                       input/output projections train fully, all other base weights frozen.
      frozen_backbone  the backbone (ViT, image projection, token embedding, backbone
                       layers) frozen; the expert and its projections train.
      (neither)        full fine-tuning.
    `frozen_dtype` holds the frozen leaves (e.g. "bfloat16"; "" keeps float32)."""
    if {"lora", "frozen_backbone"} <= set(flags):
        raise ValueError("choose one of lora, frozen_backbone")
    config.lora = ml_collections.ConfigDict()
    config.lora.rank = 0  # > 0: LoRA adapters (models/lora.py)
    config.lora.alpha = 16.0
    # Per-layer (backbone_0/q/kernel) or scanned (layers/backbone/q/kernel [L, I, O]).
    config.lora.targets = r"(backbone|expert)[^/]*/(q|kv|out|gate_up|down)/kernel$"
    config.optimizer.trainable = ""  # regex over parameter paths; "" = every leaf
    config.optimizer.frozen_dtype = ""
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
    robot = ml_collections.ConfigDict()
    robot.name = name
    robot.cameras = ""
    robot.optional_cameras = ""
    robot.image_layout = ""
    robot.state = ""
    robot.state_dims = ""
    robot.action_dim = 0
    robot.delta_action_dims = ""
    robot.joints = ""
    robot.default_prompt = ""
    robot.dataset = ""
    return robot
