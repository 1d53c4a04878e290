"""Weight-space interpolation of the zero-shot and a DPR-trained question encoder (docs/benchmarks.md).

WiSE-FT (Wortsman et al. 2022): theta(alpha) = (1 - alpha) * theta_zero_shot + alpha * theta_trained,
evaluated on dev for each alpha; alpha 0 is the zero-shot encoder, 1 the trained one. Nothing is
trained. Run from the repository root:

    python docs/experiments/wise_ft.py runs/index-l6 runs/qenc-l6 0.5 1.5
"""

import argparse
import copy
import json

from rag.common.questions import read_questions
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.index import DenseIndex
from retriever.search import Retriever

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("index_dir")
parser.add_argument("trained_dir", help="the DPR-trained question encoder")
parser.add_argument("alphas", nargs="+", type=float)
parser.add_argument("--dev", default="../shared/data/squad-open/dev.json", help="SQuAD dev questions")
args = parser.parse_args()
index = DenseIndex.load(args.index_dir)
trained = Encoder.from_pretrained(args.trained_dir)
zero = Encoder.from_pretrained(index.manifest["encoder"]["name"])
dev = read_questions(args.dev)
theta0, theta1 = zero.state_dict(), trained.state_dict()
for alpha in args.alphas:
    enc = copy.deepcopy(trained)  # keeps the trained encoder's pairing with the index
    enc.load_state_dict({name: (1 - alpha) * theta0[name] + alpha * t if t.is_floating_point() else t
                         for name, t in theta1.items()})
    metrics = evaluate_retrieval(Retriever(enc.eval(), index), dev, ks=(1, 5, 20), progress=False)
    print(json.dumps({"alpha": alpha, **metrics}), flush=True)
