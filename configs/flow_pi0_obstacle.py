"""π0 (VLM backbone + action expert, flow matching) on the language-conditioned obstacle task.

Every episode's instruction names the side to pass the obstacle on ("go around the left of
the obstacle"); the demos are the scripted expert taking exactly that side, so the data is
bimodal given the state alone and unimodal given the instruction. A policy that ignores the
prompt follows it in ~50% of episodes; π0 must follow it.

  python -m action_gen.main --config=configs/flow_pi0_obstacle.py:runlocal \
      --workdir=/tmp/pi0_obstacle --mode=train_and_eval

results.json reports `instruction_following_rate` (target >= 0.95) beside success and
collision rates.

Inputs: the instruction (byte tokenizer, padded to 48 tokens) forms the prefix with the
images (this task has none); the state history's last frame is the state token; actions are
zero-padded from the task's 2 dims to π0's 32 and the padded dims are masked out of the loss.

Variants (the arg after ':'; comma-separated key=value pairs are allowed too):
  runlocal  a small π0 (`small` size, ~1 M parameters) trained at CPU scale (minutes):
            the README number.
  pi0       the real π0 size (2.7 B parameters, bf16 activations): accelerators only.
  smoke     the `tiny` size, a handful of steps: tests.
  (none)    same as runlocal.

Fine-tuning variants, combined with a size (`runlocal,lora`, `pi0,frozen_backbone`); start
them from a trained or imported checkpoint with `--config.train.init_from=RUN_DIR`:
  lora             LoRA (rank 16, alpha 16) on every attention (q, kv, out) and MLP (gate_up,
                   down) kernel of the backbone and the expert; the expert's input/output
                   projections (state, action, time MLP, action out) train fully, all other
                   base weights are frozen (openpi's π0 LoRA recipe, minus its trainable
                   vision tower). `pi0,lora` holds the frozen base in bfloat16.
  frozen_backbone  the backbone (ViT, image projection, token embedding, backbone layers)
                   frozen; the expert and its projections train.
Only trainable leaves carry Adam state and an EMA; a served checkpoint is merged
(models/lora.py). Figures: `python -m action_gen.train.lora --config=configs/
flow_pi0_obstacle.py:pi0,lora` (abstract shapes, no memory).
"""

import ml_collections

from configs import common


def get_config(arg=None):
    flags, values = common.parse_arg(arg)
    known = {"runlocal", "pi0", "smoke"} | common.FINETUNE_VARIANTS
    unknown = flags - known
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; use {sorted(known)}")
    base_flags = {"runlocal": "demo", "smoke": "runlocal"}
    if flags and not flags & {"runlocal", "pi0", "smoke"}:
        flags = flags | {"runlocal"}  # a fine-tuning variant alone: at the runlocal size
    base_arg = ",".join(
        [base_flags[f] for f in sorted(flags) if f in base_flags]
        + [f"{k}={v}" for k, v in values.items()]
    )
    config = common.obstacle_config(objective="flow", arg=base_arg or None)

    config.data.builtin_task = "obstacle_language"
    config.data.prompt_max_len = 48
    config.data.tokenizer = "bytes"  # or the path of a SentencePiece .model file
    config.eval.env = "obstacle_language"

    # The model embeds t = time / time_scale; the objective passes t * time_scale.
    time_scale = ml_collections.FieldReference(100.0)
    config.objective.time_scale = time_scale
    config.model = ml_collections.ConfigDict()
    config.model.name = "pi0"
    config.model.variant = "tiny"
    config.model.action_dim = 32  # π0's padded action dim; the task has 2
    config.model.time_conditioning = "mlp"
    config.model.time_scale = time_scale
    config.model.dtype = "float32"
    config.model.vocab_size = 259  # byte tokenizer (data/tokenizer.py)
    config.model.remat = "none"  # none | full | a jax.checkpoint_policies name

    if "pi0" in flags:
        config.model.variant = "pi0"
        config.model.dtype = "bfloat16"
        config.model.vocab_size = None  # Gemma's 257,152 entries
        config.mesh.fsdp = -1
        config.mesh.data = 1
        config.data.batch_size = 32
        config.optimizer.lr = 2.5e-5  # openpi's π0 fine-tuning peak
        config.optimizer.warmup_steps = 1_000
        config.train.num_steps = 30_000
    elif "smoke" not in flags:
        config.model.variant = "small"
        config.data.batch_size = 128
        config.optimizer.lr = 1e-3
        config.optimizer.warmup_steps = 100
        config.train.num_steps = 6_000
        config.train.checkpoint_every = 1_000
        config.eval.num_episodes = 100

    config.train.init_from = ""  # a run dir / checkpoint dir to fine-tune from
    common.pi0_finetune_layout(config, flags, frozen_dtype="bfloat16" if "pi0" in flags else "")
    return config
