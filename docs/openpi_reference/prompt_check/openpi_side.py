import sys, pathlib, pickle, numpy as np
sys.path.insert(0, "/tmp/h14p")
import openpi.shared.download as download
download.maybe_download = lambda *a, **k: pathlib.Path("/tmp/h14p/sp.model")
from openpi.models import tokenizer as T
from cases import cases
out = {}
for L in (48, 200, 12):
    tok = T.PaligemmaTokenizer(max_len=L)
    out[L] = [(tok.tokenize(t), tok.tokenize(t, s)) for t, s in cases]
pickle.dump(out, open("/tmp/h14p/openpi_tokens.pkl", "wb"))
print("ok", len(cases))
