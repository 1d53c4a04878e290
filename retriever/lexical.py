"""A lexical head for the question tower: BM25 folded into the question vector, index untouched.

On SQuAD, where questions are written from their paragraph and share its words, BM25 beats dense
retrievers (Karpukhin et al. 2020, Table 2), and a dense question encoder trained against a frozen
context encoder learns little more from 44 training articles (docs/benchmarks.md). The head adds
to the dense question vector a bag-of-words vector: one learned row per vocabulary token,

    E_Q(q) = dense(q) + sum over distinct content tokens t of q of  W[t]            (W: V x D)

so the score against a frozen passage vector p is dense(q)^T p + sum_t W[t]^T p. The context side
and the FAISS index do not change, and RAG's p(z|x) stays a softmax over inner products.

W starts where that sum imitates BM25 as closely as the frozen passage space allows (the idea of a
dense model imitating a sparse one is Chen et al. 2022's SPAR; here only the question side moves).
With B (R x V) the BM25 weight of each token in each passage and P (R x D) the passage vectors,
BM25's scores of q against all passages are the sum over its tokens of the columns B[:, t]; the
ridge least-squares map of such a column into the question space is (P^T P + rho I)^-1 P^T B[:, t],
so the head starts at

    W = lambda * B^T P (P^T P + rho I)^-1          (V x D; lambda weighs BM25 against the cosine)

then DPR training moves W with the rest of the question encoder. Tokens are the encoder's own
word pieces; special tokens and punctuation carry no row ("content" tokens are the rest).

Glossary: N texts, L tokens, V vocabulary size, D dimension, R passages.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .sparse import SparseConfig, SparseIndex, content_tokens

HEAD_NAME = "lexical_head.safetensors"


class LexicalHead(nn.Module):
    """``forward(input_ids, attention_mask) -> (N, D)``: the sum of W over each text's distinct
    content tokens (a token repeated in a question counts once, as BM25 scores a query)."""

    def __init__(self, tokenizer, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(len(tokenizer), dim))
        self.register_buffer("content", torch.from_numpy(content_tokens(tokenizer)),
                             persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.bool() & self.content[input_ids]  # (N, L)
        ids = input_ids.masked_fill(~keep, -1)
        ids, _ = ids.sort(dim=1)  # (N, L) equal ids now adjacent, dropped ones (-1) first
        first = torch.ones_like(keep)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        keep = first & (ids >= 0)  # (N, L) one position per distinct content token
        rows = self.weight[ids.clamp(min=0)]  # (N, L, D)
        return (rows * keep.unsqueeze(-1).to(rows.dtype)).sum(1)


def bm25_weights(tokenizer, titles: list[str], texts: list[str], k1: float = 1.5,
                 b: float = 0.75) -> torch.Tensor:
    """Sparse (R, V) BM25 weight of each content token in each passage (``title text``).

    bm25s' "lucene" scores over the encoder's word pieces (``retriever.sparse``, tokenizer
    "wordpiece"), times (k1 + 1): Robertson et al.'s BM25 with Lucene's idf,
    idf(t) = ln(1 + (R - df + 0.5) / (df + 0.5)), weight = idf * tf (k1 + 1) / (tf + k1 (1 - b +
    b |p| / avgdl)), |p| counted in content tokens.
    """
    config = SparseConfig(sparse_tokenizer="wordpiece", bm25_k1=k1, bm25_b=b)
    sparse = SparseIndex.build(titles, texts, config, tokenizer)
    vocab = tokenizer.get_vocab()
    token_id = np.full(sparse.matrix.shape[1], -1, dtype=np.int64)  # bm25s column -> token id
    for term, col in sparse.bm25.vocab_dict.items():
        if col < len(token_id):  # bm25s also names "" (empty documents), with no column
            token_id[col] = vocab.get(term, -1)
    coo = sparse.matrix.tocoo()  # (R, V_bm25s)
    keep = token_id[coo.col] >= 0
    return torch.sparse_coo_tensor(np.vstack([coo.row[keep], token_id[coo.col[keep]]]),
                                   (k1 + 1) * coo.data[keep].astype(np.float32),
                                   (len(texts), len(tokenizer)), check_invariants=True).coalesce()


def fit_head(head: LexicalHead, bm25: torch.Tensor, passages: torch.Tensor, weight: float,
             ridge: float = 1e-2) -> None:
    """Set ``head.weight`` (V, D) to ``weight`` times the least-squares map from BM25 scores onto the
    frozen passage vectors (module doc). bm25 (R, V) sparse; passages (R, D) float."""
    p = passages.double()
    gram = p.T @ p + ridge * torch.eye(p.shape[1], dtype=torch.float64)  # (D, D)
    solve = torch.linalg.solve(gram, p.T).T.float()  # (R, D)
    fitted = torch.sparse.mm(bm25.t().coalesce(), solve)  # (V, D)
    with torch.no_grad():
        head.weight.copy_(weight * fitted)
