"""Zero-shot contrastive entropy of the two layer-cut families of all-MiniLM-L6-v2 (docs/scaling.md).

Nothing is trained: each size is cut from the packaged encoder with ``truncated_encoder`` and
measured the way ``ragqa scale sweep`` measures (500 random dev questions, 256 negatives, 5 redraws,
scores 20 * q . p). Run from the repository root:

    python docs/experiments/zeroshot_family.py first_and_last first
"""

import argparse

import numpy as np

from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.encoder import Encoder
from retriever.scaling.entropy import contrastive_entropy
from retriever.scaling.sweep import SweepConfig, load_sweep_data, truncated_encoder

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("families", nargs="*", default=["first_and_last", "first"],
                    help="first_and_last and/or first")
parser.add_argument("--data", default="../shared/data/squad-open",
                    help="folder of corpus.tsv, train.json and dev.json")
parser.add_argument("--model", default=SweepConfig.model, help="the encoder the sizes are cut from")
parser.add_argument("--negatives", type=int, default=256, help="negatives per pair")
parser.add_argument("--max_length", type=int, default=192, help="tokens per passage")
args = parser.parse_args()
config = SweepConfig(model=args.model, max_length=args.max_length, num_negatives=args.negatives)
data = load_sweep_data(f"{args.data}/corpus.tsv", f"{args.data}/train.json", f"{args.data}/dev.json",
                       config)
base = Encoder.from_pretrained(config.model, max_length=config.max_length)
quiet = EncodeConfig(progress=False)
rows = np.unique(np.concatenate([data.dev_gold, data.pool]))  # (R,)
for keep in args.families:
    for layers in range(1, base.backbone.config.num_hidden_layers + 1):
        enc = truncated_encoder(base, layers, keep).eval()
        vecs = dict(zip(rows.tolist(), encode_texts(enc, [data.texts[r] for r in rows],
                                                    [data.titles[r] for r in rows], quiet),
                        strict=True))
        q = 20 * encode_texts(enc, data.dev_questions, None, quiet)  # (P, H)
        gold = np.stack([vecs[int(r)] for r in data.dev_gold])
        pool = np.stack([vecs[int(r)] for r in data.pool])
        mean, std = contrastive_entropy(q, gold, pool, num_negatives=args.negatives, repeats=5, seed=0)
        print(f"{keep:15s} l={layers}  CE {mean:.4f} ± {std:.4f}", flush=True)
