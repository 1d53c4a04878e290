"""Zero-shot contrastive entropy of the two layer-cut families of all-MiniLM-L6-v2 (docs/scaling.md).

Nothing is trained: each size is cut from the packaged encoder with ``truncated_encoder`` and
measured the way ``ragqa scale sweep`` measures (500 random dev questions, 256 negatives, 5 redraws,
scores 20 * q . p). Run from the repository root:

    python docs/experiments/zeroshot_family.py first_and_last first
"""

import sys

import numpy as np

from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.encoder import Encoder
from retriever.scaling.entropy import contrastive_entropy
from retriever.scaling.sweep import SweepConfig, load_sweep_data, truncated_encoder

DATA = "../shared/data/squad-open"
config = SweepConfig(max_length=192)
data = load_sweep_data(f"{DATA}/corpus.tsv", f"{DATA}/train.json", f"{DATA}/dev.json", config)
base = Encoder.from_pretrained(config.model, max_length=192)
quiet = EncodeConfig(progress=False)
rows = np.unique(np.concatenate([data.dev_gold, data.pool]))  # (R,)
for keep in sys.argv[1:] or ["first_and_last", "first"]:
    for layers in range(1, base.backbone.config.num_hidden_layers + 1):
        enc = truncated_encoder(base, layers, keep).eval()
        vecs = dict(zip(rows.tolist(), encode_texts(enc, [data.texts[r] for r in rows],
                                                    [data.titles[r] for r in rows], quiet),
                        strict=True))
        q = 20 * encode_texts(enc, data.dev_questions, None, quiet)  # (P, H)
        gold = np.stack([vecs[int(r)] for r in data.dev_gold])
        pool = np.stack([vecs[int(r)] for r in data.pool])
        mean, std = contrastive_entropy(q, gold, pool, num_negatives=256, repeats=5, seed=0)
        print(f"{keep:15s} l={layers}  CE {mean:.4f} ± {std:.4f}", flush=True)
