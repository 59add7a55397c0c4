"""π0 / π0.5 imported from an openpi checkpoint: the config `tools/openpi_import.py` stores.

  python -m action_gen.tools.openpi_import --openpi_checkpoint=SRC --workdir=DST
  python -m action_gen.main --mode=serve --workdir=DST                  # openpi-client works
  python -m action_gen.main --config=configs/flow_pi0_openpi.py:pi0 \\
      --config.train.init_from=DST --config.data.dataset_dir=MY_RLDS --workdir=RUN --mode=train

Every field reproduces openpi's function (model options: state padded to 32, cameras in
openpi's fixed order, resize-with-pad, no clipping; objective: openpi's time convention, t = 1
noise → 0 data, 10 Euler steps on its float32 time grid). The importer prints the exact arg
of the checkpoint it wrote (variant, horizon, norm) so that fine-tuning matches `model.*`.

Variants (the arg after ':', comma-separated; key=value pairs too):
  pi0        π0 (continuous state token, action/time MLP; z-score norm stats).
  pi05       π0.5 (adaRMSNorm time conditioning, state only in the prompt; quantile norm).
  variant=   a key of models/pi0.py SIZES ("pi0" real size, "openpi_dummy", "tiny", ...).
  horizon=   the action horizon H (openpi: 50).       norm=  meanstd | quantile.
  tokenizer= a SentencePiece model (PaliGemma's `paligemma_tokenizer.model`), or "bytes"
             (ids that mean nothing to a real checkpoint: only for synthetic ones).
  max_token_len=  the padded prompt length (openpi: 48 for π0, 200 for π0.5).
  prompt_format=  openpi_pi0 (π0's default: cleaned text + "\\n") | openpi_pi05 (π0.5's
             default: "Task: ..., State: <256-bin normalized state>;\\nAction: ") | plain;
             a π0.5 trained with openpi's discrete_state_input=False takes openpi_pi0.
"""

import ml_collections

from configs import common

CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")  # openpi's IMAGE_KEYS


def get_config(arg=None):
    flags, values = common.parse_arg(arg)
    unknown = flags - {"pi0", "pi05"}
    if unknown or len(flags) > 1:
        raise ValueError(f"config variant must be one of pi0, pi05; got {sorted(flags)}")
    pi05 = "pi05" in flags
    config = common.obstacle_config(objective="flow")

    variant = values.get("variant", "pi0")
    horizon = int(values.get("horizon", 50))
    config.data.builtin_task = ""  # a robot's own RLDS data: data.dataset_dir
    config.data.obs_horizon = 1
    config.data.action_horizon = horizon
    config.data.cameras = {name: (224, 224) for name in CAMERAS}
    config.data.prompt_max_len = int(values.get("max_token_len", 200 if pi05 else 48))
    config.data.tokenizer = values.get("tokenizer", "bytes")
    config.data.prompt_format = values.get("prompt_format", "openpi_pi05" if pi05 else "openpi_pi0")
    norm = values.get("norm", "quantile" if pi05 else "meanstd")
    config.data.state_norm = norm
    config.data.action_norm = norm
    config.data.batch_size = 32

    config.model = ml_collections.ConfigDict()
    config.model.name = "pi0"
    config.model.variant = variant
    config.model.action_dim = 32
    config.model.time_conditioning = "adarms" if pi05 else "mlp"
    config.model.time_scale = 1.0  # the model embeds openpi's τ itself
    config.model.dtype = "float32"
    config.model.vocab_size = None  # the variant's (Gemma's 257,152)
    config.model.remat = "full"
    config.model.state_pad_dim = 32
    config.model.state_token = not pi05
    config.model.camera_order = CAMERAS
    config.model.image_resize = "pad"

    config.objective.time_convention = "noise_at_1"
    config.objective.time_scale = 1.0
    config.objective.integrator = "euler"
    config.objective.clip_sample = False
    config.objective.num_sample_steps = 10

    # openpi's fine-tuning schedule: AdamW (0.9, 0.95), warmup 1k, cosine 2.5e-5 → 2.5e-6.
    config.optimizer.lr = 2.5e-5
    config.optimizer.warmup_steps = 1_000
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.95
    config.optimizer.weight_decay = 1e-10
    config.optimizer.final_lr_fraction = 0.1
    config.train.num_steps = 30_000
    config.train.init_from = ""  # the imported checkpoint's workdir
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.eval.env = ""  # a real robot: no built-in simulator
    return config
