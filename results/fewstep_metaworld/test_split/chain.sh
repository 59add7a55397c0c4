#!/bin/bash
# Meta-World few-step rows on the test split (issue #28 item 7), one task after another.
cd /work/main
PY=.venv/bin/python
for T in "$@"; do
  W=/tmp/mw_test/$T; R=/tmp/mw_test/results/$T; mkdir -p $R
  C="configs/consistency_unet_metaworld.py:task=$T,cpu"
  E="--config.eval.seed=200000 --config.eval.record="
  echo "$T start $(date +%T)"
  [ -f $R/results_steps1.json ] || { $PY -m action_gen.main --config=$C --workdir=$W --mode=train > $R/train.log 2>&1 || { echo "$T train failed"; continue; }; echo "$T trained $(date +%T)"; }
  [ -f $R/results_steps1.json ] || { $PY -m action_gen.main --mode=eval --workdir=$W --config=$C $E > $R/eval1.log 2>&1 && cp $W/results.json $R/results_steps1.json; }
  [ -f $R/results_steps2.json ] || { $PY -m action_gen.main --mode=eval --workdir=$W --config=$C $E --config.eval.num_sample_steps=2 > $R/eval2.log 2>&1 && cp $W/results.json $R/results_steps2.json; }
  [ -f $R/results_steps1_cand4.json ] || { $PY -m action_gen.main --mode=eval --workdir=$W --config=$C $E --config.eval.num_candidates=4 > $R/eval4.log 2>&1 && cp $W/results.json $R/results_steps1_cand4.json; }
  [ -f $R/teacher_results.json ] || { $PY -m action_gen.main --mode=eval --workdir=$W/teacher --config=configs/flow_unet_metaworld.py:task=$T,cpu $E > $R/evalt.log 2>&1 && cp $W/teacher/results.json $R/teacher_results.json; }
  echo "$T done $(date +%T)"
done
