#!/bin/bash
# Import each openpi reference checkpoint for its robot, compare both observations of each case.
# Run from the repository root; REF = the references made by make_policy_ref.py, OUT = import dirs.
R=${REF:-/tmp/openpi_policy_ref}; O=${OUT:-/tmp/imp}; T=$R/tokenizer.model; P=".venv/bin/python -m action_gen.tools.openpi_import"
imp() { name=$1; shift; [ -d $O/$name ] || $P --workdir=$O/$name --tokenizer=$T "$@" 2>/dev/null | tail -1 | cut -c1-200; }
imp pi0_libero --openpi_checkpoint=$R/ckpt_pi0 --robot=libero --asset_id=physical-intelligence/libero --delta_action_dims=6,-1
imp pi05_libero --openpi_checkpoint=$R/ckpt_pi05 --robot=libero --asset_id=physical-intelligence/libero --action_horizon=10 --prompt_format=openpi_pi0 --max_token_len=200
imp pi0_aloha --openpi_checkpoint=$R/ckpt_pi0 --robot=aloha --asset_id=trossen --default_prompt="fold the towel"
imp pi0_aloha_sim --openpi_checkpoint=$R/ckpt_pi0 --robot=aloha_sim --asset_id=lerobot/aloha_sim_transfer_cube_human --default_prompt="Transfer cube"
imp pi0_droid --openpi_checkpoint=$R/ckpt_pi0 --robot=droid --asset_id=droid --action_horizon=10
imp pi05_droid --openpi_checkpoint=$R/ckpt_pi05 --robot=droid --asset_id=droid --action_horizon=15
for case in pi0_libero pi05_libero pi0_aloha pi0_aloha_sim pi0_droid pi05_droid pi0_libero_resize pi0_aloha_resize; do
  wd=${case%_resize}
  for i in 0 1; do
    echo "$case $i $($P --compare=$R/REF_${case}_$i.npz --workdir=$O/$wd 2>/dev/null | tail -1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["max_abs_error"], d["max_rel_error"], d["max_abs_openpi"], d["passed"], d["shape"])')"
  done
done
