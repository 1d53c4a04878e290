"""Retriever benchmarks, printed as figures and ratios (record them in docs/benchmarks.md).

1. Corpus encoding, passages/s: ours (``retriever.batch_encode.encode_texts``) against
   sentence-transformers' ``SentenceTransformer.encode`` on the same model, texts, batch size and
   max length, alternating runs; outputs are checked to agree.
2. Search overhead: ``DenseIndex.search_knn`` against a bare ``faiss.Index.search`` on the same
   index and queries (goal <= 1.10x), and the full ``search`` with passage lookup for reference.
3. HNSW on synthetic 384-d vectors: recall@10 against exact flat search and queries/s.
4. Hybrid against dense-only search (with --hybrid_index, an index with a sparse side), side by
   side in one run, batches of --hybrid_batch questions, k = --k: on that index, and on a corpus
   --replicas times larger made from it (each copy with unique ids, every passage's words
   shuffled, vectors = the original's plus noise, renormalised). Latency with question encoding
   (what a caller of Retriever.retrieve waits) and search alone (question vectors given); the
   sparse side's build time and size on disk.

Example:
    python scripts/perf_retriever.py --corpus ../shared/data/squad-open/corpus.tsv --json runs/bench.json
    python scripts/perf_retriever.py --skip_encoding --skip_search --hybrid_index runs/index-l6 \
        --json runs/bench-hybrid.json
"""

from __future__ import annotations

import platform
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from measure import Stopwatch, median_seconds  # this directory: the perf scripts' one set of timers

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, remove_with, write_json
from rag.common.model_path import resolve_pretrained
from rag.common.options import POSITIVE, check_fields, option
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.corpus import load_corpus, open_shards, write_arrow
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.index_factory import IndexConfig


@dataclass(frozen=True)
class Args:
    corpus: str = option("../shared/data/squad-open/corpus.tsv", "passages to encode for part 1")
    encoder: str = option("all-MiniLM-L6-v2", "a sentence-transformers model folder or packaged name")
    n_passages: int = option(512, "passages encoded per run in part 1", within=POSITIVE)
    batch_size: int = option(32, "batch size for both encoders", within=POSITIVE)
    max_length: int = option(256, "max tokens for both encoders", within=POSITIVE)
    repeats: int = option(3, "timed runs per contender (alternating); the median is reported",
        within=POSITIVE)
    n_vectors: int = option(100_000, "synthetic vectors for parts 2 and 3", within=POSITIVE)
    n_queries: int = option(1_000, "queries for parts 2 and 3", within=POSITIVE)
    dim: int = option(384, "synthetic vector dimension", within=POSITIVE)
    k: int = option(10, "neighbours per query", within=POSITIVE)
    skip_encoding: bool = option(False, "skip part 1")
    skip_search: bool = option(False, "skip parts 2 and 3")
    hybrid_index: str | None = option(
        None, "part 4: an index directory with a sparse side (else skipped)")
    questions: str = option("../shared/data/squad-open/dev.json", "part 4: questions to search with")
    hybrid_batch: int = option(64, "part 4: questions per search call", within=POSITIVE)
    replicas: int = option(
        45, "part 4: copies of the index's corpus in the large corpus (45 x 4,497 = 202k)", within=POSITIVE)
    json: str | None = option(None, "write all figures here")

    def __post_init__(self) -> None:
        check_fields(self)


def perf_encoding(args: Args) -> dict:
    from sentence_transformers import SentenceTransformer

    texts = load_corpus(args.corpus)["text"][: args.n_passages]
    ours = Encoder.from_pretrained(args.encoder, max_length=args.max_length).eval()
    st = SentenceTransformer(resolve_pretrained(args.encoder), device="cpu")
    st.max_seq_length = args.max_length
    cfg = EncodeConfig(batch_size=args.batch_size, progress=False)

    def run_ours():
        return encode_texts(ours, texts, config=cfg)

    def run_st():
        return st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True,
                         show_progress_bar=False)

    a, b = run_ours(), run_st()  # warm-up, and the agreement check
    cos = float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    t_ours, t_st = [], []
    for _ in range(args.repeats):  # alternate so background load hits both alike
        t_ours.append(median_seconds(run_ours, 1))
        t_st.append(median_seconds(run_st, 1))
    ours_ps = len(texts) / statistics.median(t_ours)
    st_ps = len(texts) / statistics.median(t_st)
    return {"passages": len(texts), "batch_size": args.batch_size, "max_length": args.max_length,
            "ours_passages_per_s": round(ours_ps, 2), "st_passages_per_s": round(st_ps, 2),
            "ratio": round(ours_ps / st_ps, 3), "min_cosine_ours_vs_st": round(cos, 6)}


def synthetic(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors (a Gaussian mixture), closer to real embeddings than pure noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _index(vectors: np.ndarray, config: IndexConfig) -> DenseIndex:
    tmp = Path(tempfile.mkdtemp(prefix="ragqa-bench-"))
    write_arrow(({"id": str(i), "title": "", "text": "x"} for i in range(len(vectors))),
                tmp / "passages.arrow")
    identity = {"name": "synthetic", "fingerprint": "synthetic", "dim": vectors.shape[1]}
    index = DenseIndex.build(vectors, open_shards([tmp / "passages.arrow"]), identity, config)
    remove_with(index, tmp)
    return index


def perf_search(args: Args, base: np.ndarray, queries: np.ndarray) -> dict:
    index = _index(base, IndexConfig(index_type="flat"))
    bare = index.index
    index.search_knn(queries[:10], args.k)

    t_bare = median_seconds(lambda: bare.search(queries, args.k), args.repeats)
    t_ours = median_seconds(lambda: index.search_knn(queries, args.k), args.repeats)
    t_full = median_seconds(lambda: index.search(queries, args.k), args.repeats)
    same = np.array_equal(bare.search(queries, args.k)[1], index.search_knn(queries, args.k)[1])
    return {"vectors": len(base), "queries": len(queries), "k": args.k,
            "bare_faiss_s": round(t_bare, 4), "search_knn_s": round(t_ours, 4),
            "overhead_ratio": round(t_ours / t_bare, 3), "search_with_passages_s": round(t_full, 4),
            "same_results": bool(same)}


def perf_hnsw(args: Args, base: np.ndarray, queries: np.ndarray) -> dict:
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    _, truth = exact.search(queries, args.k)
    with Stopwatch() as watch:
        index = _index(base, IndexConfig(index_type="hnsw"))
    build_s = watch.seconds
    t = median_seconds(lambda: index.search_knn(queries, args.k), args.repeats)
    _, got = index.search_knn(queries, args.k)
    recall = np.mean([len(set(g) & set(t_)) / args.k for g, t_ in zip(got, truth, strict=True)])
    t_flat = median_seconds(lambda: exact.search(queries, args.k), args.repeats)
    return {"vectors": len(base), "dim": base.shape[1], "k": args.k,
            "ef_search": index.config.hnsw_ef_search, "m": index.config.hnsw_m,
            "build_s": round(build_s, 1), f"recall_at_{args.k}": round(float(recall), 4),
            "hnsw_queries_per_s": round(len(queries) / t, 1),
            "flat_queries_per_s": round(len(queries) / t_flat, 1)}


def perf_hybrid(args: Args) -> dict:
    from rag.common.questions import read_questions

    index = DenseIndex.load(args.hybrid_index)
    encoder = Encoder.from_pretrained(index.manifest["encoder"]["name"]).eval()
    questions = [q.question for q in read_questions(args.questions)][: args.hybrid_batch]
    out = {"batch": len(questions), "k": args.k, "squad_open": _time_modes(args, index, encoder,
                                                                           questions)}
    big = _replicated(index, args.replicas)
    with Stopwatch() as watch:
        big.add_sparse(index.sparse.config, tokenizer=encoder.tokenizer)
    build_s = watch.seconds
    with tempfile.TemporaryDirectory(prefix="ragqa-bench-") as tmp:
        big.save(Path(tmp) / "idx")
        size = sum(f.stat().st_size for f in (Path(tmp) / "idx" / "sparse").rglob("*") if f.is_file())
        dense_size = (Path(tmp) / "idx" / "index.faiss").stat().st_size
        out["replicated"] = {**_time_modes(args, big, encoder, questions),
                             "sparse_build_s": round(build_s, 2), "sparse_bytes": size,
                             "faiss_bytes": dense_size}
    out["squad_open"]["sparse_bytes"] = sum(
        f.stat().st_size for f in (Path(args.hybrid_index) / "sparse").rglob("*") if f.is_file())
    return out


def _time_modes(args: Args, index: DenseIndex, encoder: Encoder, questions: list[str]) -> dict:
    """Median seconds per batch, dense against hybrid (alternating), with and without encoding."""
    from retriever.fusion import RetrievalConfig
    from retriever.search import Retriever

    class Given(Retriever):  # search alone: the question vectors computed beforehand
        vectors = torch.from_numpy(encode_texts(encoder, questions, config=EncodeConfig(progress=False)))

        def encode(self, questions, grad=False):
            return self.vectors

    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # alternate, so background load hits all alike
        for mode in ("dense", "hybrid"):
            for name, cls in ((mode, Retriever), (f"{mode}_search", Given)):
                r = cls(encoder, index, RetrievalConfig(mode))
                times.setdefault(name, []).append(
                    median_seconds(lambda r=r: r.retrieve(questions, args.k), 1))
    med = {m: statistics.median(t) for m, t in times.items()}
    return {"passages": len(index), "dense_s": round(med["dense"], 4),
            "hybrid_s": round(med["hybrid"], 4), "ratio": round(med["hybrid"] / med["dense"], 3),
            "dense_search_s": round(med["dense_search"], 4),
            "hybrid_search_s": round(med["hybrid_search"], 4),
            "search_ratio": round(med["hybrid_search"] / med["dense_search"], 3)}


def _replicated(index: DenseIndex, replicas: int) -> DenseIndex:
    """The index's corpus ``replicas`` times: unique ids, each passage's words shuffled, vectors
    with Gaussian noise (0.02 per coordinate) and renormalised."""
    rng = np.random.default_rng(0)
    base = index.vectors(np.arange(int(index.manifest["rows"])))
    titles, texts = list(index.passages["title"]), list(index.passages["text"])

    def rows():
        for c in range(replicas):
            for i, (title, text) in enumerate(zip(titles, texts, strict=True)):
                words = text.split()
                if c:
                    rng.shuffle(words)
                yield {"id": f"{c}-{i}", "title": title, "text": " ".join(words)}

    tmp = Path(tempfile.mkdtemp(prefix="ragqa-bench-"))
    write_arrow(rows(), tmp / "passages.arrow")
    vecs = np.concatenate([base] + [base + 0.02 * rng.standard_normal(base.shape).astype(np.float32)
                                    for _ in range(replicas - 1)])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    big = DenseIndex.build(vecs, open_shards([tmp / "passages.arrow"]), index.manifest["encoder"])
    remove_with(big, tmp)
    return big


def main() -> None:
    (args,) = parse([Args], description=__doc__)
    if args.json:
        check_output_parent(args.json)
    report = {"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                          "faiss": faiss.__version__, "torch": torch.__version__}}
    if not args.skip_encoding:
        report["encoding"] = perf_encoding(args)
        e = report["encoding"]
        print(f"encoding: ours {e['ours_passages_per_s']} passages/s, sentence-transformers "
              f"{e['st_passages_per_s']} passages/s, ratio {e['ratio']} (goal >= 1.0); "
              f"min cosine {e['min_cosine_ours_vs_st']}")
    if args.hybrid_index:
        report["hybrid"] = h = perf_hybrid(args)
        for name in ("squad_open", "replicated"):
            r = h[name]
            print(f"hybrid vs dense, {r['passages']} passages, batch {h['batch']}, k {h['k']}: "
                  f"{r['hybrid_s']}s vs {r['dense_s']}s, ratio {r['ratio']} (goal <= 1.5); search "
                  f"alone {r['hybrid_search_s']}s vs {r['dense_search_s']}s, ratio {r['search_ratio']}; "
                  f"sparse side {r['sparse_bytes'] / 2**20:.1f} MiB"
                  + (f", built in {r['sparse_build_s']}s" if "sparse_build_s" in r else ""))
    if args.skip_search:
        if args.json:
            write_json(args.json, report)
        return
    base = synthetic(args.n_vectors, args.dim, seed=0)
    queries = synthetic(args.n_queries, args.dim, seed=1)
    report["search"] = s = perf_search(args, base, queries)
    print(f"search: bare faiss {s['bare_faiss_s']}s, search_knn {s['search_knn_s']}s, overhead "
          f"{s['overhead_ratio']}x (goal <= 1.10x); with passages {s['search_with_passages_s']}s")
    report["hnsw"] = h = perf_hnsw(args, base, queries)
    print(f"hnsw: recall@{args.k} {h[f'recall_at_{args.k}']}, {h['hnsw_queries_per_s']} q/s "
          f"(flat {h['flat_queries_per_s']} q/s), build {h['build_s']}s")
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    run(main)
