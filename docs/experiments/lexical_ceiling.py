"""How much of BM25 a question-side head can carry into a frozen passage space (docs/benchmarks.md).

Scores every dev question against every passage of the index four ways: the zero-shot cosine, BM25
over the encoder's word pieces (retriever.lexical.bm25_weights), their sum with BM25 scaled by its
per-question maximum (a two-index hybrid, which a single dense index cannot express), and the cosine
plus the least-squares lexical head (retriever.lexical.fit_head) at several weights, which is what
``ragqa train-retriever --lexical_head`` starts from. Nothing is trained. Run from the repository root:

    python docs/experiments/lexical_ceiling.py runs/index-l6 ../shared/data/squad-open/dev.json
"""

import json
import sys

import numpy as np
import torch

from rag.common.qa_metrics import normalize_answer
from rag.common.questions import read_questions
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.lexical import LexicalHead, bm25_weights, content_tokens, fit_head
from retriever.metrics import has_answer

KS = (1, 5, 20)
index_dir, questions_path = sys.argv[1:3]
index = DenseIndex.load(index_dir)
enc = Encoder.from_pretrained(index.manifest["encoder"]["name"]).eval()
dev = read_questions(questions_path)
rows = np.arange(len(index))
passages = torch.from_numpy(index.vectors(rows))  # (R, D)
bm25 = bm25_weights(enc.tokenizer, list(index.passages["title"]), list(index.passages["text"]))
texts = [normalize_answer(t) for t in index.passages["text"]]
dense = encode_texts(enc, [q.question for q in dev], config=EncodeConfig(progress=False)) @ passages.numpy().T
tok = enc.tokenize([q.question for q in dev])
content = torch.from_numpy(content_tokens(enc.tokenizer))  # (V,) bool
keep = tok["attention_mask"].bool() & content[tok["input_ids"]]  # (N, L)
question_of, _ = torch.nonzero(keep, as_tuple=True)
pairs = sorted(set(zip(question_of.tolist(), tok["input_ids"][keep].tolist(), strict=True)))
bag = torch.sparse_coo_tensor(torch.tensor(pairs).T, torch.ones(len(pairs)), (len(dev), bm25.shape[1]),
                              check_invariants=True)  # (N, V) distinct content tokens
with torch.no_grad():
    lexical = torch.sparse.mm(bm25, bag.t().coalesce()).to_dense().T.numpy()  # (N, R) BM25 scores
    head = LexicalHead(enc.tokenizer, enc.dim)
    fit_head(head, bm25, passages, weight=1.0)
    projected = (head(tok["input_ids"], tok["attention_mask"]) @ passages.T).numpy()  # (N, R)


def accuracy(scores: np.ndarray) -> dict:
    top = np.argsort(-scores, axis=1)[:, : max(KS)]
    first = [next((j for j, r in enumerate(row) if has_answer(texts[r], q.answers, normalized=True)),
                  None) for q, row in zip(dev, top, strict=True)]
    return {k: round(100 * sum(f is not None and f < k for f in first) / len(dev), 2) for k in KS}


report = {"cosine (zero-shot)": dense, "BM25 (word pieces)": lexical}
scaled = lexical / np.maximum(lexical.max(1, keepdims=True), 1e-9)
for lam in (0.1, 0.3, 0.5):
    report[f"two-index hybrid: cosine + {lam} BM25 / max"] = dense + lam * scaled
for lam in (0.01, 0.02, 0.05):
    report[f"one index: cosine + least-squares head, weight {lam}"] = dense + lam * projected
for name, scores in report.items():
    print(json.dumps({"scores": name, "top_k_accuracy": accuracy(scores)}), flush=True)
