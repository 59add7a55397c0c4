"""Diffusion Policy (image U-Net, DDIM) on a real RLDS dataset by its public name, or a
mixture of them, or a LeRobot dataset directory.

  python -m action_gen.main --config=configs/diffusion_unet_dataset.py:name=bridge \
      --config.data.dataset_dir=/data/bridge --workdir=/tmp/dp_bridge --mode=train
  python -m action_gen.main \
      --config=configs/diffusion_unet_dataset.py:name=fractal20220817_data+bridge+taco_play \
      --config.data.dataset_dirs=/data/fractal20220817_data,/data/bridge,/data/taco_play \
      --config.data.weights="(2.0, 1.0, 1.0)" --workdir=/tmp/dp_oxe --mode=train
  python -m action_gen.main --config=configs/diffusion_unet_dataset.py:name=lerobot \
      --config.data.dataset_dir=/data/lerobot/aloha_sim_insertion --workdir=/tmp/dp_lr --mode=train

Arg (comma-separated; the part after ':'):
  name=NAME        a registered mapping (action_gen/data/standardize.py REGISTRY):
                   fractal20220817_data, bridge, bridge_dataset, taco_play,
                   libero_{10,goal,object,spatial}_no_noops, droid, aloha; a name of your
                   own with its mapping in a JSON file {NAME: mapping} passed as
                   --config.data.mapping_file=FILE; `lerobot` for a LeRobot
                   directory (converted once to RLDS in <workdir>/dataset/lerobot_<dir>
                   by the data step); `native` for an RLDS dataset in our own layout.
  name=A+B+C       a mixture: data.dataset_dirs (comma-separated, one per name), weights
                   data.weights (default equal); each dataset normalized with its own
                   stats, action dims padded to the largest (action_dim_mask), camera
                   slots it lacks black with image_mask False.
  smoke            a few CPU steps at tiny size (32 px frames, 2 U-Net levels, ResNet width
                   8) using every camera the mapping names: checks a dataset end to end.
  size=N           the model's square image size (default 224; smoke 32).
  steps=N, seed=N  overrides.

DATA.dataset_dir may be <data_dir>, <data_dir>/<name> or <data_dir>/<name>/<version>
(the newest version is read). `python -m action_gen.data.inspect DIR` prints a dataset's
features and a starter mapping. Evaluation needs a simulator: these configs train only;
serve the result with `python -m action_gen.main --mode=serve --workdir=W [--dataset=NAME]`.
"""

import ml_collections

from configs import common

_VARIANTS = {"smoke"}


def get_config(arg=None):
    flags, values = common.parse_arg(arg)
    unknown = flags - _VARIANTS
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; use {sorted(_VARIANTS)}")
    names = [n for n in values.get("name", "").split("+") if n]
    if not names:
        raise ValueError("name= names no dataset; e.g. name=bridge or name=bridge+taco_play")
    smoke = "smoke" in flags
    config = common.obstacle_config(
        "diffusion", ",".join(["runlocal"] * smoke + [f"seed={values.get('seed', 0)}"])
    )

    data = config.data
    data.builtin_task = ""  # external data only
    data.dataset_names = names
    # The schema's defaults: data.dataset_dir "" (one dataset, name=NAME), data.split "train"
    # (or "test", "val", a TFDS slice "train[:95%]"), data.mapping_file "" (a JSON file
    # {NAME: mapping}: mappings from the command line).
    data.dataset_dirs = ""  # a mixture: comma-separated, one per name
    data.weights = tuple([1.0] * len(names))  # a tuple: overridable, "(2.0, 1.0, 1.0)"
    data.mappings = ml_collections.ConfigDict()  # NAME -> mapping (standardize.py)
    size = int(values.get("size", 32 if smoke else 224))
    data.image_size = [size, size]  # every camera slot, aspect kept (black padding)
    # {slot: [h, w]}; None: the slots of the datasets' mappings at data.image_size, filled
    # in at train start and stored in the checkpoint.
    data.cameras = None
    crop = int(round(size * 84 / 96))
    data.image_crop = [crop, crop]  # DP's random crop in training, center crop at inference
    data.prompt_max_len = 64  # bytes of the instruction the model reads
    data.tokenizer = "bytes"
    data.state_norm = "minmax"
    data.action_norm = "quantile"  # robust to teleoperation outliers (1st / 99th pct)
    data.validate = True
    data.batch_size = 64
    data.shuffle_buffer = 2_000  # windows of frames are large

    model = config.model
    model.image_crop = [crop, crop]
    model.image_features = 64
    model.num_keypoints = 32
    model.resnet_width = 64
    model.vocab_size = 259
    model.instruction_features = 64
    model.instruction_layers = 1
    config.objective.clip_sample = False  # quantile targets may leave [-1, 1]
    config.train.num_steps = 100_000
    config.train.checkpoint_every = 5_000
    config.optimizer.warmup_steps = 1_000
    config.eval.env = ""  # real robots: no simulator to evaluate in
    config.eval.plot = False

    if smoke:
        data.batch_size = 8
        data.shuffle_buffer = 64
        model.down_dims = (16, 32)
        model.time_embed_dim = 16
        model.image_features = 8
        model.num_keypoints = 4
        model.resnet_width = 8
        model.resnet_blocks = [1, 1]
        model.instruction_features = 16
        config.train.num_steps = 4
        config.train.log_every = 2
        config.train.checkpoint_every = 2
        config.train.async_checkpoints = False
        config.optimizer.warmup_steps = 2
    if "steps" in values:
        config.train.num_steps = int(values["steps"])
    return config
