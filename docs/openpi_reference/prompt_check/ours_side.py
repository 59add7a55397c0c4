import sys, pickle, numpy as np
sys.path.insert(0, "/tmp/h14p"); sys.path.insert(0, "/work/main")
from action_gen.data import tokenizer
from cases import cases
ref = pickle.load(open("/tmp/h14p/openpi_tokens.pkl", "rb"))
tok = tokenizer.create_tokenizer("/tmp/h14p/sp.model")
texts = [t for t, _ in cases]
n = 0
for L, rows in ref.items():
    for fmt, k in (("openpi_pi0", 0), ("openpi_pi05", 1)):
        for (text, state), r in zip(cases, rows):
            toks, mask = tokenizer.tokenize_prompts(tok, [text], L, prompt_format=fmt, states=[state])
            assert np.array_equal(toks[0], np.asarray(r[k][0]).astype(np.int64)), (L, fmt, text, state, toks[0], r[k][0])
            assert np.array_equal(mask[0], r[k][1]), (L, fmt, text)
            n += 1
print("equal", n, "cases; truncated:", sum(len(np.asarray(r[1][0])) == L and r[1][1].all() for L, rows in ref.items() for r in rows))
