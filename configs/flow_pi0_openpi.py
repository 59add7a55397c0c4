"""π0 / π0.5 in openpi's conventions: the config of an imported openpi checkpoint, and of
fine-tuning it on a robot's own data (LeRobot v3.0 / v2.1 or RLDS).

  # import for a robot, serve it to that robot's openpi client
  python -m action_gen.tools.openpi_import --openpi_checkpoint=/ckpt/pi0_base --workdir=/tmp/pi0 \\
      --robot=aloha --tokenizer=/path/paligemma_tokenizer.model --default_prompt="fold the towel"
  python -m action_gen.main --mode=serve --workdir=/tmp/pi0
  # fine-tune it with LoRA on a LeRobot dataset in the ALOHA layout, then serve the result
  python -m action_gen.main --config=configs/flow_pi0_openpi.py:pi0,robot=aloha,lora \\
      --config.train.init_from=/tmp/pi0 --config.data.dataset_dir=/data/my_aloha_lerobot \\
      --workdir=/tmp/pi0_ft --mode=train
  python -m action_gen.main --mode=serve --workdir=/tmp/pi0_ft

Every field reproduces openpi's function (model options: state padded to 32, cameras in
openpi's fixed order, resize-with-pad, no clipping; objective: openpi's time convention, t = 1
noise → 0 data, 10 Euler steps on its float32 time grid; the robot adapter: openpi's
LiberoInputs / AlohaInputs / DroidInputs, delta actions, the ALOHA joint convention). The
importer prints the exact arg of the checkpoint it wrote; fine-tune with the same `pi0` /
`pi05`, `variant=`, `horizon=`, `tokenizer=` and `robot=` (the parameters' shapes and the
conventions they were trained under).

Variants (the arg after ':', comma-separated; key=value pairs too):
  pi0 | pi05       π0 (state token, action/time MLP; z-score norm) or π0.5 (adaRMSNorm time
                   conditioning, state only in the prompt; quantile norm). Required.
  robot=NAME       the robot adapter (action_gen/data/robots.py): libero, aloha, aloha_sim,
                   droid, or a name of your own with its fields in config.robot.*.
  lora             fine-tune LoRA adapters (rank 16) on every attention / MLP kernel, the
                   expert's projections fully; the frozen base in bfloat16.
  frozen_backbone  fine-tune the action expert and its projections only.
                   (neither: full fine-tuning, openpi's default recipe.)
  variant=         a key of models/pi0.py SIZES ("pi0" real size, "openpi_dummy", "tiny", ...).
  horizon=         the action horizon H (openpi: 50; pi0_droid 10, pi05_droid 15,
                   pi05_libero 10).                    norm=  meanstd | quantile.
  tokenizer=       a SentencePiece model (PaliGemma's `paligemma_tokenizer.model`), or "bytes"
                   (ids that mean nothing to a real checkpoint: only for synthetic ones).
  max_token_len=   the padded prompt length (openpi: 48 for π0, 200 for π0.5).
  prompt_format=   openpi_pi0 (π0's default: cleaned text + "\\n") | openpi_pi05 (π0.5's
                   default: "Task: ..., State: <256-bin normalized state>;\\nAction: ") | plain;
                   a π0.5 trained with openpi's discrete_state_input=False (pi05_libero) takes
                   openpi_pi0.
  steps=, batch=   fine-tuning length and batch (openpi: 30,000 × 32).
  smoke            a few-second check: the `tiny` size, H = 4, 2 steps of batch 2, short
                   prompts (with pi0 / pi05; `variant=`, `horizon=` still override).

Fine-tuning data: `data.dataset_dir` is a LeRobot dataset (meta/info.json: converted once to
RLDS in the workdir by the data step) or an RLDS dataset; the robot adapter finds its
cameras, state, actions and task text there (`config.robot.dataset` names them where the
defaults do not fit). The prompt is the episode's task text, else `config.robot.
default_prompt`. Norm stats are the new data's, computed after the robot's joint convention
and delta actions, as openpi's `compute_norm_stats` does for a fine-tuning dataset (the
imported checkpoint's stats describe the robots of its pretraining mixture, not yours).
"""

import ml_collections

from configs import common

CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")  # openpi's IMAGE_KEYS


def get_config(arg=None):
    flags, values = common.parse_arg(arg)
    known = {"pi0", "pi05", "smoke"} | common.FINETUNE_VARIANTS
    unknown = flags - known
    models = flags & {"pi0", "pi05"}
    if unknown or len(models) != 1:
        raise ValueError(
            f"config variants: one of pi0, pi05, optionally one of "
            f"{sorted(common.FINETUNE_VARIANTS)}; got {sorted(flags)}"
        )
    pi05 = "pi05" in flags
    smoke = "smoke" in flags
    config = common.obstacle_config(objective="flow")

    variant = values.get("variant", "tiny" if smoke else "pi0")
    horizon = int(values.get("horizon", 4 if smoke else 50))
    config.data.builtin_task = ""  # a robot's own data: data.dataset_dir
    config.data.dataset_dir = ""  # a LeRobot (v3.0 / v2.1) or RLDS dataset directory
    config.data.dataset_names = ""  # "" = the robot's recordings (or lerobot, detected)
    config.data.validate = True
    config.data.obs_horizon = 1
    config.data.action_horizon = horizon
    config.data.cameras = {name: (224, 224) for name in CAMERAS}
    default_len = 16 if smoke else (200 if pi05 else 48)
    config.data.prompt_max_len = int(values.get("max_token_len", default_len))
    config.data.tokenizer = values.get("tokenizer", "bytes")
    config.data.prompt_format = values.get("prompt_format", "openpi_pi05" if pi05 else "openpi_pi0")
    norm = values.get("norm", "quantile" if pi05 else "meanstd")
    config.data.state_norm = norm
    config.data.action_norm = norm
    config.data.batch_size = int(values.get("batch", 2 if smoke else 32))
    config.data.shuffle_buffer = 2_000  # windows of 224² frames are large

    config.robot = common.robot_section(values.get("robot", ""))

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

    # openpi's fine-tuning schedule: AdamW (0.9, 0.95), warmup 1k, cosine 2.5e-5 → 2.5e-6,
    # EMA 0.99 (openpi's ema_decay; our EMA warms up to it).
    config.optimizer.lr = 2.5e-5
    config.optimizer.warmup_steps = 1_000
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.95
    config.optimizer.weight_decay = 1e-10
    config.optimizer.final_lr_fraction = 0.1
    config.train.num_steps = int(values.get("steps", 2 if smoke else 30_000))
    config.train.checkpoint_every = min(1_000, config.train.num_steps)
    config.train.ema_max_decay = 0.99
    config.train.init_from = ""  # the imported checkpoint's workdir
    common.pi0_finetune_layout(config, flags, frozen_dtype="bfloat16")
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.eval.env = ""  # a real robot: no built-in simulator
    return config
