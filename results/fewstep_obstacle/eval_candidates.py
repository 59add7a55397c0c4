import json, sys
sys.path.insert(0, "/work/main")
from action_gen.sample.policy import Policy
from action_gen.eval import evaluate
W = sys.argv[1]
for m in (1, 4):
    for steps in (1, 2):
        p = Policy.from_checkpoint(W, num_sample_steps=steps, sampling={"num_candidates": m})
        cfg = p.config.eval
        cfg.unlock(); cfg.num_episodes = 100; cfg.num_sample_steps = steps
        summary, _ = evaluate.evaluate_policy(p, cfg)
        keep = ["num_candidates", "num_sample_steps", "episodes", "success_rate", "collision_rate", "mode_left_fraction", "mode_right_fraction", "action_jerk"]
        print(json.dumps({k: summary[k] for k in keep}), flush=True)
