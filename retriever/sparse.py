"""The sparse side of an index: BM25 over the passages (title and text), with bm25s.

It lives in the index directory beside the dense side (``retriever.index_files``)::

    sparse/             bm25s' own files (params, vocabulary, CSC score matrix), memory-mapped
    sparse/tokenizer/   the word-piece tokenizer, when the sparse side tokenises with one

and the manifest names its tokenizer, k1, b and row count, checked on load. Row r of the score
matrix is index row r (the FAISS id), so both sides name a passage the same way; rows removed by
hot-swapping are masked at search time by the caller.

Tokenisation (``SparseConfig.sparse_tokenizer``):

- ``words``: bm25s' own: lower-cased words of two or more characters, English stopwords removed,
  Snowball-stemmed (PyStemmer);
- ``wordpiece``: the context encoder's word pieces, punctuation and special tokens left out (the
  tokens ``retriever.lexical`` gives rows).

Scores are bm25s' ("lucene" BM25): for a batch of questions they are one sparse product of the
(R, V) score matrix with the questions' (V, B) token counts, equal to ``bm25s.BM25.get_scores``.

Glossary: B questions, R index rows, V sparse vocabulary.
"""

from __future__ import annotations

import copy
import json
import logging
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import Stemmer

from rag.common.artefact import inside
from rag.common.errors import UserError
from rag.common.options import FRACTION, NON_NEGATIVE, check_fields, option

log = logging.getLogger(__name__)
Tokenizer = Literal["words", "wordpiece"]
SPARSE_DIR = "sparse"
TOKENIZER_DIR = "tokenizer"
BM25S_FILES = ("params.index.json", "vocab.index.json", "data.csc.index.npy",
               "indices.csc.index.npy", "indptr.csc.index.npy")


def content_tokens(tokenizer) -> np.ndarray:
    """(V,) bool: token ids that carry content (not special, not only punctuation): the terms of
    the word-piece BM25 side, and what the lexical head (``retriever.lexical``) reads."""
    keep = np.ones(len(tokenizer), dtype=bool)
    keep[list(tokenizer.all_special_ids)] = False
    for token, i in tokenizer.get_vocab().items():
        stem = token.removeprefix("##")
        if stem and all(ch in string.punctuation for ch in stem):
            keep[i] = False
    return keep


@dataclass(frozen=True)
class SparseConfig:
    """The BM25 side of an index: how passages and questions become terms, and BM25's k1 and b."""

    sparse_tokenizer: Tokenizer = option(
        "words", "\"words\" (stemmed words, English stopwords out) or \"wordpiece\" (the context "
        "encoder's word pieces); docs/benchmarks.md compares them on dev")
    bm25_k1: float = option(
        0.9, "BM25 term-frequency saturation (Anserini's default; docs/benchmarks.md)", within=NON_NEGATIVE)
    bm25_b: float = option(0.4, "BM25 length normalisation, 0 = none, 1 = full (Anserini's default)",
        within=FRACTION)

    def __post_init__(self) -> None:
        check_fields(self)


class Tokenize:
    """Text to BM25 terms, as ``SparseConfig.sparse_tokenizer`` says (module doc)."""

    def __init__(self, kind: str, tokenizer=None):
        self.kind = kind
        self.tokenizer = tokenizer
        if kind == "wordpiece":
            if tokenizer is None:
                raise ValueError("the wordpiece sparse tokenizer needs the encoder's tokenizer")
            self._keep = content_tokens(tokenizer)
        else:
            self._stemmer = Stemmer.Stemmer("english")

    def __call__(self, texts: list[str]) -> list[list[str]]:
        if self.kind == "words":
            return _bm25s().tokenize(texts, stopwords="en", stemmer=self._stemmer, return_ids=False,
                                  show_progress=False)
        out = []
        for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]:
            ids = np.asarray(ids, dtype=np.int64)
            out.append(self.tokenizer.convert_ids_to_tokens(ids[self._keep[ids]].tolist()))
        return out


def _bm25s():
    """bm25s, its logger quieted (it sets itself to DEBUG on import and logs every build)."""
    import bm25s  # lazy: so that its logger is quieted right after its import, once

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def passage_texts(titles: list[str], texts: list[str]) -> list[str]:
    """What BM25 indexes of each passage: ``title text``."""
    return [f"{t} {x}" for t, x in zip(titles, texts, strict=True)]


class SparseIndex:
    """bm25s scores over index rows, searched in batches (module doc)."""

    def __init__(self, bm25, config: SparseConfig, tokenizer=None):
        self.bm25 = bm25
        self.config = config
        self.tokenize = Tokenize(config.sparse_tokenizer, tokenizer)
        s = bm25.scores
        # (R, V) CSC: column t holds the BM25 weight of term t in each passage that has it
        self.matrix = sp.csc_matrix((s["data"], s["indices"], s["indptr"]),
                                    shape=(s["num_docs"], len(s["indptr"]) - 1))

    def __len__(self) -> int:
        return int(self.bm25.scores["num_docs"])

    @classmethod
    def build(cls, titles: list[str], texts: list[str], config: SparseConfig = SparseConfig(),
              tokenizer=None) -> SparseIndex:
        """Index ``title text`` of every row (``tokenizer``: the encoder's, for ``wordpiece``)."""
        bm25s = _bm25s()
        titles, texts = list(titles), list(texts)
        tokenize = Tokenize(config.sparse_tokenizer, tokenizer)
        bm25 = bm25s.BM25(k1=config.bm25_k1, b=config.bm25_b, method="lucene")
        terms = []
        for start in range(0, len(texts), 4096):  # word pieces: a fast tokenizer in batches
            terms += tokenize(passage_texts(titles[start : start + 4096], texts[start : start + 4096]))
        bm25.index(terms, show_progress=False)
        return cls(bm25, config, tokenizer)

    def rows(self, start: int, stop: int) -> SparseIndex:
        """The sparse side of rows ``start:stop`` alone, with the whole corpus's term statistics:
        its scores are these rows' scores here (a shard's, ``retriever.shards``)."""
        part = self.matrix[start:stop].tocsc()
        bm25 = copy.copy(self.bm25)  # its settings and vocabulary; the scores are replaced
        dtype = self.bm25.scores["indices"].dtype
        bm25.scores = {"data": part.data, "indices": part.indices.astype(dtype),
                       "indptr": part.indptr.astype(dtype), "num_docs": stop - start}
        return SparseIndex(bm25, self.config, self.tokenize.tokenizer)

    def scores(self, questions: list[str]) -> np.ndarray:
        """BM25 scores (B, R) float32 of every row for each question (``bm25s.get_scores``)."""
        vocab, width = self.bm25.vocab_dict, self.matrix.shape[1]
        rows, cols = [], []
        for b, terms in enumerate(self.tokenize(questions)):
            ids = [vocab[t] for t in terms if t in vocab and vocab[t] < width]  # bm25s' "" has none
            rows += ids
            cols += [b] * len(ids)
        counts = sp.csc_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                               shape=(self.matrix.shape[1], len(questions)))  # (V, B), summed
        return np.ascontiguousarray((self.matrix @ counts).T.toarray(), dtype=np.float32)

    def entry(self) -> dict:
        """What the manifest records of this side (checked by :meth:`load`)."""
        return {"dir": SPARSE_DIR, "library": "bm25s", "method": "lucene", "rows": len(self),
                "vocabulary": int(self.matrix.shape[1]), **asdict(self.config)}

    def save(self, out_dir: Path) -> None:
        """Write bm25s' files (and the word-piece tokenizer) into ``out_dir`` (a new directory)."""
        self.bm25.save(str(out_dir), show_progress=False)
        if self.tokenize.tokenizer is not None:
            self.tokenize.tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)

    @classmethod
    def load(cls, index_dir: Path, entry: dict, rows: int, mmap: bool = True) -> SparseIndex:
        """Open ``index_dir/sparse`` memory-mapped; missing or corrupt files, or files that
        disagree with the manifest ``entry``, raise :class:`UserError`."""
        bm25s = _bm25s()
        where = index_dir / SPARSE_DIR
        if entry.get("dir", SPARSE_DIR) != SPARSE_DIR:
            raise UserError(f"{index_dir / 'manifest.json'}: the sparse side must be in {SPARSE_DIR}/, "
                            f"not {entry.get('dir')!r}")
        try:
            config = SparseConfig(**{k: entry[k] for k in SparseConfig.__dataclass_fields__})
        except (KeyError, TypeError, UserError) as err:
            raise UserError(f"{index_dir / 'manifest.json'}: bad sparse entry ({err})") from None
        where = inside(index_dir, SPARSE_DIR, index_dir / "manifest.json")
        for name in BM25S_FILES:
            if not inside(where, name, index_dir / "manifest.json").is_file():
                raise UserError(f"{where}: incomplete sparse index (missing {name})")
        tokenizer = None
        if config.sparse_tokenizer == "wordpiece":
            from transformers import AutoTokenizer  # lazy: transformers, for a wordpiece side only

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(where / TOKENIZER_DIR))
            except (OSError, ValueError, TypeError) as err:
                raise UserError(f"{where / TOKENIZER_DIR}: cannot load the tokenizer "
                                f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                                ) from None
        try:
            params = json.loads((where / "params.index.json").read_text())
            bm25 = bm25s.BM25.load(str(where), mmap=mmap, show_progress=False)
            s = bm25.scores
            ok = (s["num_docs"] == rows == entry.get("rows")
                  and len(s["indptr"]) - 1 == entry.get("vocabulary")
                  and len(bm25.vocab_dict) - len(s["indptr"]) in (-1, 0)  # bm25s may add ""
                  and int(s["indptr"][-1]) == len(s["data"]) == len(s["indices"])
                  and params.get("k1") == config.bm25_k1 and params.get("b") == config.bm25_b
                  and params.get("method") == "lucene")
        except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
            raise UserError(f"{where}: corrupt sparse index ({type(err).__name__})") from None
        if not ok:
            raise UserError(f"{where}: sparse index does not match manifest.json")
        return cls(bm25, config, tokenizer)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows (B, k) int64 of the k largest scores in each row of (B, R), best first; equal scores
    go to the lower row, at the cut too (so the result does not depend on numpy's partition)."""
    k = min(k, scores.shape[1])
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]  # (B,) the k-th largest score
    for b, row in enumerate(scores):
        above = np.flatnonzero(row > kth[b])
        picked = np.concatenate([above, np.flatnonzero(row == kth[b])[: k - len(above)]])
        picked.sort()
        out[b] = picked[np.argsort(-row[picked], kind="stable")]
    return out
