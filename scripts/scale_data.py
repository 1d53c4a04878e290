"""The data ``perf_scale.py`` measures on, each file cached under its work folder while its recipe
(``<file>.json``) holds: a corpus of real passage vectors among Gaussian distractors that look like
them, the real questions as queries, and the queries' exact top-k over the corpus."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from rag.common.atomic import atomic_file
from retriever.corpus import corpus_digest, write_arrow
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.search import Retriever, check_questions

log = logging.getLogger("perf_scale")
CHUNK = 100_000  # corpus rows generated, written or searched exactly at a time


def cached(path: Path, recipe: dict, write: Callable[[Path], None]) -> Path:
    """``path``, written by ``write(temporary path)`` unless it is there with the same recipe
    (kept beside it as ``<name>.json``); both are written atomically."""
    meta = path.with_name(path.name + ".json")
    try:
        if path.exists() and json.loads(meta.read_text()) == json.loads(json.dumps(recipe)):
            log.info("reusing %s", path)
            return path
    except (OSError, ValueError):
        pass
    meta.unlink(missing_ok=True)
    with atomic_file(path) as tmp:
        write(tmp)
    with atomic_file(meta) as tmp:
        tmp.write_text(json.dumps(recipe))
    return path


def make_corpus(seed: int, size: int, real: np.ndarray, real_ids: list[str], rows: np.ndarray,
                recipe: dict, out: Path) -> tuple[np.ndarray, Path]:
    """The memory-mapped corpus (N, D) float32, real vector j at row ``rows[j]`` and Gaussian
    distractors elsewhere (module doc), and the file of its passage table."""
    norms = np.linalg.norm(real, axis=1)
    norm = float(norms.mean()) if np.allclose(norms, norms.mean(), rtol=1e-3) else None  # one length?

    def write_vectors(tmp: Path) -> None:
        mean = real.mean(axis=0, dtype=np.float64)
        eigval, eigvec = np.linalg.eigh(np.cov(real, rowvar=False))  # covariance (D, D)
        root = (eigvec * np.sqrt(np.clip(eigval, 0, None))).astype(np.float32)  # root @ root.T = cov
        rng = np.random.default_rng(seed + 1)
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(size, real.shape[1]))
        for start in range(0, size, CHUNK):
            stop = min(size, start + CHUNK)
            noise = rng.standard_normal((stop - start, real.shape[1]), dtype=np.float32)
            x = (noise @ root.T + mean).astype(np.float32)  # (chunk, D)
            if norm is not None:  # the real vectors all have one length: so do the distractors
                x *= norm / np.linalg.norm(x, axis=1, keepdims=True)
            here = (rows >= start) & (rows < stop)
            x[rows[here] - start] = real[here]
            matrix[start:stop] = x
        matrix.flush()

    def write_passages(tmp: Path) -> None:
        real_at = dict(zip(rows.tolist(), real_ids, strict=True))
        write_arrow(({"id": real_at.get(i, f"synthetic-{i}"), "title": "", "text": ""}
                     for i in range(size)), tmp)

    vectors = np.load(cached(out / "vectors.npy", recipe, write_vectors), mmap_mode="r")
    return vectors, cached(out / "passages.arrow", recipe, write_passages)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows (Q, k) int64 of the k largest inner products, over ``vectors`` CHUNK rows at a time."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)  # (Q, <=k)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), CHUNK):
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(np.ascontiguousarray(vectors[start : start + CHUNK], dtype=np.float32))
        s, r = flat.search(queries, min(k, flat.ntotal))
        s, r = np.concatenate([best_s, s], 1), np.concatenate([best_r, r + start], 1)  # (Q, <=2k)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    return best_r


def load_queries(path: str, questions: list[str], n: int, seed: int, real: DenseIndex, work: Path
                 ) -> tuple[Path, dict]:
    """``n`` of the ``questions`` (read from ``path``), a sample drawn with ``seed``, encoded by the
    real index's encoder as Retriever encodes them: the file and its recipe."""
    pick = np.sort(np.random.default_rng(seed).choice(len(questions), n, replace=False))
    recipe = {"questions": corpus_digest(path), "queries": n,
              "seed": seed, "encoder": real.manifest["encoder"]["fingerprint"]}

    def write(tmp: Path) -> None:
        encoder = Encoder.from_pretrained(real.manifest["encoder"]["name"]).eval()
        texts = check_questions([questions[i] for i in pick])
        np.save(tmp, Retriever(encoder, real).encode(texts).numpy().astype(np.float32))

    return cached(work / "queries.npy", recipe, write), recipe
