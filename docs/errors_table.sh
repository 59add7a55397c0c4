#!/bin/bash
# Bad inputs for every entry point (issue #29): prints a markdown table of each command's
# exit status, its number of stderr lines and their last two lines. Run from the repository
# root: `bash docs/errors_table.sh > /tmp/errors.md` (a few minutes: one interpreter each).
P=${PYTHON:-.venv/bin/python}
mkdir -p /tmp/empty_wd /tmp/errs/bad_lerobot/meta
echo '{"codebase_version": "v3.0"' > /tmp/errs/bad_lerobot/meta/info.json   # truncated JSON
echo hi > /tmp/errs/notjson.txt
row() { label=$1; shift; raw=$(timeout 120 "$@" 2>&1 >/dev/null); rc=$?; n=$(echo "$raw" | grep -c .); out=$(echo "$raw" | grep -v "^\s*$" | tail -2 | tr '\n' ' ' | sed 's/|/\\|/g'); echo "| \`$label\` | $rc | $n | $(echo "$out" | cut -c1-230) |"; }
echo "| command | exit | stderr lines | what the user sees (stderr) |"
echo "|---|---|---|---|"
row "main --config=configs/nope.py" $P -m action_gen.main --config=configs/nope.py --workdir=/tmp/e1
row "main --config=configs/diffusion_unet_obstacle.py:dmeo" $P -m action_gen.main --config=configs/diffusion_unet_obstacle.py:dmeo --workdir=/tmp/e1
row "main ... --config.foo=1" $P -m action_gen.main --config=configs/diffusion_unet_obstacle.py:smoke --workdir=/tmp/e1 --config.foo=1
row "main ... --config.optimizer.lrr=1e-4" $P -m action_gen.main --config=configs/diffusion_unet_obstacle.py:smoke --workdir=/tmp/e1 --config.optimizer.lrr=1e-4
row "main ... --mode=trian" $P -m action_gen.main --config=configs/diffusion_unet_obstacle.py:smoke --workdir=/tmp/e1 --mode=trian
row "main --mode=eval --workdir=/tmp/empty_wd" $P -m action_gen.main --mode=eval --workdir=/tmp/empty_wd
row "main --config=... (no --workdir)" $P -m action_gen.main --config=configs/diffusion_unet_obstacle.py:smoke
row "main ... --config.data.batch_size=abc" $P -m action_gen.main --config=configs/diffusion_unet_obstacle.py:smoke --workdir=/tmp/e1 --config.data.batch_size=abc
row "serve: main --mode=serve --workdir=/tmp/empty_wd" $P -m action_gen.main --mode=serve --workdir=/tmp/empty_wd
row "openpi_import --openpi_checkpoint=/nonexistent --workdir=/tmp/e2" $P -m action_gen.tools.openpi_import --openpi_checkpoint=/nonexistent --workdir=/tmp/e2
row "openpi_import (no flags)" $P -m action_gen.tools.openpi_import
row "openpi_import --robot=alhoa ..." $P -m action_gen.tools.openpi_import --openpi_checkpoint=/tmp --workdir=/tmp/e2 --robot=alhoa
row "openpi_import --compare=/nonexistent.npz --workdir=/tmp/empty_wd" $P -m action_gen.tools.openpi_import --compare=/nonexistent.npz --workdir=/tmp/empty_wd
row "openpi_import --openpi_checkpoint=/tmp/empty_wd --workdir=/tmp/e2" $P -m action_gen.tools.openpi_import --openpi_checkpoint=/tmp/empty_wd --workdir=/tmp/e2
row "openpi_import --bogus" $P -m action_gen.tools.openpi_import --bogus
row "data.inspect /nonexistent" $P -m action_gen.data.inspect /nonexistent
row "data.inspect /tmp/empty_wd" $P -m action_gen.data.inspect /tmp/empty_wd
row "data.inspect (no path)" $P -m action_gen.data.inspect
row "data.inspect /tmp/errs/bad_lerobot" $P -m action_gen.data.inspect /tmp/errs/bad_lerobot
row "data.inspect /tmp/errs/notjson.txt" $P -m action_gen.data.inspect /tmp/errs/notjson.txt
row "data.validate /nonexistent" $P -m action_gen.data.validate /nonexistent
row "data.validate /tmp/empty_wd" $P -m action_gen.data.validate /tmp/empty_wd
row "data.validate (no path)" $P -m action_gen.data.validate
row "data.validate /tmp/errs/bad_lerobot" $P -m action_gen.data.validate /tmp/errs/bad_lerobot
row "data.validate --bogus /tmp" $P -m action_gen.data.validate --bogus /tmp
row "convert_lerobot /nonexistent /tmp/e6" $P -m action_gen.data.convert_lerobot /nonexistent /tmp/e6
row "convert_lerobot (no args)" $P -m action_gen.data.convert_lerobot
row "convert_lerobot /tmp/empty_wd /tmp/e6" $P -m action_gen.data.convert_lerobot /tmp/empty_wd /tmp/e6
row "convert_lerobot /tmp/errs/bad_lerobot /tmp/e6" $P -m action_gen.data.convert_lerobot /tmp/errs/bad_lerobot /tmp/e6
row "convert_lerobot --bogus SRC DST" $P -m action_gen.data.convert_lerobot --bogus /tmp/errs/bad_lerobot /tmp/e6
row "envs.collect --env=obstalce --episodes=2 --out=/tmp/e3" $P -m action_gen.envs.collect --env=obstalce --episodes=2 --out=/tmp/e3
row "envs.collect --episodes=-1 --out=/tmp/e3" $P -m action_gen.envs.collect --env=obstacle --episodes=-1 --out=/tmp/e3
row "envs.collect (no --out)" $P -m action_gen.envs.collect --env=obstacle --episodes=2
row "envs.collect --bogus" $P -m action_gen.envs.collect --bogus
row "envs.collect --env=metaworld:nope-v3 --episodes=1 --out=/tmp/e3" $P -m action_gen.envs.collect --env=metaworld:nope-v3 --episodes=1 --out=/tmp/e3
row "launch/demo.py --policies=nope" $P launch/demo.py --policies=nope --out=/tmp/e4
row "launch/demo.py --bogus" $P launch/demo.py --bogus
row "launch/demo.py --out=/proc/x" $P launch/demo.py --out=/proc/x --variant=smoke
row "launch/demo.py --variant=dmeo --policies=regression_unet" $P launch/demo.py --variant=dmeo --policies=regression_unet --out=/tmp/e4
row "launch/demo.py --episodes=abc" $P launch/demo.py --episodes=abc
row "launch/sweep.py --config=configs/nope.py --workdir=/tmp/e7" $P launch/sweep.py --config=configs/nope.py --workdir=/tmp/e7
row "launch/sweep.py (no flags)" $P launch/sweep.py
row "launch/sweep.py --config=configs/ablation_obstacle.py:nope --workdir=/tmp/e7" $P launch/sweep.py --config=configs/ablation_obstacle.py:nope --workdir=/tmp/e7
row "launch/sweep.py --bogus" $P launch/sweep.py --bogus
row "launch/metaworld_benchmark.py --methods=nope --workdir=/tmp/e5" $P launch/metaworld_benchmark.py --methods=nope --workdir=/tmp/e5
row "launch/metaworld_benchmark.py --bogus --workdir=/tmp/e5" $P launch/metaworld_benchmark.py --bogus --workdir=/tmp/e5
row "benchmarks/sampler.py --models=nope" $P benchmarks/sampler.py --models=nope
row "benchmarks/sampler.py --runs=abc" $P benchmarks/sampler.py --runs=abc
row "benchmarks/train_throughput.py --platform=gpux" $P benchmarks/train_throughput.py --platform=gpux
row "benchmarks/pi0_latency.py --variant=huge" $P benchmarks/pi0_latency.py --variant=huge
row "benchmarks/serve.py --workdir=/tmp/empty_wd" $P benchmarks/serve.py --workdir=/tmp/empty_wd
row "benchmarks/serve.py --workdir=/nonexistent" $P benchmarks/serve.py --workdir=/nonexistent
row "benchmarks/sampler.py --batch=0" $P benchmarks/sampler.py --batch=0 --models=tiny --runs=1
row "launch/sweep.py --config=configs/diffusion_unet_obstacle.py:demo --workdir=/tmp/e7" $P launch/sweep.py --config=configs/diffusion_unet_obstacle.py:demo --workdir=/tmp/e7
row "launch/sweep.py --config=configs/ablation_obstacle.py:demo --workdir=/tmp/e7 --parallel=0" $P launch/sweep.py --config=configs/ablation_obstacle.py:demo --workdir=/tmp/e7 --parallel=0
row "launch/metaworld_benchmark.py (no flags)" $P launch/metaworld_benchmark.py
row "launch/metaworld_benchmark.py --workdir=/tmp/e5 --parallel=abc" $P launch/metaworld_benchmark.py --workdir=/tmp/e5 --parallel=abc
row "launch/metaworld_benchmark.py --workdir=/tmp/e5 --steps=push" $P launch/metaworld_benchmark.py --workdir=/tmp/e5 --steps=push
