"""Flow matching (conditional 1-D U-Net, 10 Euler steps) on the ALOHA sim tasks.

Same data, model and evaluation as configs/diffusion_unet_aloha.py (see its docstring for
the two commands and the arg: task=NAME, state | image=HxW, chunk=N, exec=N, cpu, smoke);
only the objective differs:

  python -m action_gen.main --config=configs/flow_unet_aloha.py:task=insertion,state,cpu \
      --workdir=/tmp/flow_aloha_ins_state --mode=train_and_eval
"""

from configs import diffusion_unet_aloha


def get_config(arg=None):
    return diffusion_unet_aloha.aloha_config("flow", arg)
