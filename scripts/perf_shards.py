"""Sharded search against one process, side by side: memory per process and queries/s.

Splits --index (flat or HNSW) into --shards shards (as `ragqa index --split` does; reused when
--work already holds them), then starts torchrun twice: one process searching the whole index,
and --shards processes searching the shards together (retriever.shards), each process asking its
share of the queries in batches of --batch. Each process reports its RSS after loading (VmRSS,
less its RSS just before) and its search time; queries/s is all queries over the slowest
process's time. The sharded results are checked against the whole index's: the same rows.
The machine's cores are divided among the processes (OMP_NUM_THREADS), as they would be on one
machine; on several machines each process would have its own.

Query vectors: --query_vectors (a .npy of (Q, D) float32, e.g. the one scripts/perf_scale.py
caches) or the questions of --questions encoded by the index's encoder.

Example:
    python scripts/perf_shards.py --corpus runs/scale/n1000000 --index runs/scale/flat-1m \
        --query_vectors runs/scale/queries.npy --shards 2 --json runs/scale/shards-1m.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from measure import MiB, Stopwatch, process_rss  # this directory: the perf scripts' one set

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, write_json
from rag.common.errors import UserError
from rag.common.options import POSITIVE, check_fields, option

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Args:
    index: str = option("runs/index-l6", "unsharded index directory (flat or HNSW) to split and search")
    corpus: str | None = option(
        None, "instead: a corpus directory of scripts/perf_scale.py (vectors.npy, passages.arrow), "
        "indexed flat into --index first (unless --index exists)")
    shards: int = option(2, "shards, and processes searching them together", within=POSITIVE)
    query_vectors: str | None = option(None, ".npy (Q, D) float32 query vectors; default: --questions")
    questions: str = option(
        "../shared/data/squad-open/dev.json", "encoded when --query_vectors is absent")
    k: int = option(10, "passages per query", within=POSITIVE)
    batch: int = option(100, "queries per search call (per process)", within=POSITIVE)
    work: str = option("runs/scale", "where the shards and the queries go")
    json: str | None = option(None, "write the figures here")
    worker: str | None = option(
        None, "(internal) run as one process of a torchrun job, writing this file")

    def __post_init__(self) -> None:
        check_fields(self)


def rss_mib() -> float:
    return process_rss()["VmRSS"] / MiB


def worker(args: Args) -> None:
    """One process: load, search its share of the queries, report (collective with the others)."""
    from rag.common import collective
    from rag.common.loop import make_accelerator
    from retriever.shards import load_index

    acc = make_accelerator()
    queries = np.load(Path(args.work) / "bench-shards-queries.npy")
    before = rss_mib()
    index = load_index(args.index)
    loaded = rss_mib() - before
    mine = collective.share(len(queries))
    index.search_knn(queries[mine[:10]], args.k)  # warm-up
    acc.wait_for_everyone()
    rows = []
    with Stopwatch() as watch:
        for i in range(0, len(mine), args.batch):
            rows.append(index.search_knn(queries[mine[i : i + args.batch]], args.k)[1])
    seconds = watch.seconds
    rows = collective.gather_shares(list(np.concatenate(rows)), len(queries))
    report = {"rank": acc.process_index, "rss_after_load_mib": round(loaded, 1),
              "rss_mib": round(rss_mib(), 1), "seconds": seconds}
    reports = collective.all_objects(report)
    if acc.is_main_process:
        np.save(Path(args.worker).with_suffix(".rows.npy"), np.stack(rows))
        Path(args.worker).write_text(json.dumps(reports))


def launch(args: Args, index: Path, processes: int, out: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",  # a free port of its own
           f"--nproc_per_node={processes}",
           str(Path(__file__).resolve()), "--index", str(index), "--k", str(args.k),
           "--batch", str(args.batch), "--work", args.work, "--worker", str(out), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise UserError(f"the {processes}-process search failed:\n{done.stderr[-3000:]}")
    reports = json.loads(out.read_text())
    seconds = max(r["seconds"] for r in reports)
    return {"processes": processes, "omp_threads": threads, "index": str(index),
            "rss_after_load_mib": [r["rss_after_load_mib"] for r in reports],
            "rss_mib": [r["rss_mib"] for r in reports], "seconds": round(seconds, 3),
            "rows": np.load(out.with_suffix(".rows.npy"))}


def query_vectors(args: Args, index) -> np.ndarray:
    if args.query_vectors:
        return np.load(args.query_vectors).astype(np.float32)
    from rag.common.questions import read_questions
    from retriever.batch_encode import EncodeConfig, encode_texts
    from retriever.encoder import Encoder

    encoder = Encoder.from_pretrained(index.manifest["encoder"]["name"])
    questions = [q.question for q in read_questions(args.questions)]
    return encode_texts(encoder, questions, config=EncodeConfig(progress=False))


def main() -> None:
    (args,) = parse([Args], description=__doc__)
    if args.worker:
        return worker(args)
    if args.json:
        check_output_parent(args.json)
    from retriever.index import DenseIndex
    from retriever.shards import is_sharded, split_index

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.corpus and not Path(args.index).exists():
        from retriever.corpus import open_shards

        corpus = Path(args.corpus)
        vectors = np.load(corpus / "vectors.npy", mmap_mode="r")
        identity = {"name": "synthetic", "fingerprint": "bench-scale", "dim": vectors.shape[1]}
        DenseIndex.build(vectors, open_shards([corpus / "passages.arrow"]), identity).save(args.index)
    index = DenseIndex.load(args.index)
    np.save(work / "bench-shards-queries.npy", query_vectors(args, index))
    sharded = work / f"{Path(args.index).name}-{args.shards}shards"
    with Stopwatch() as watch:
        if not is_sharded(sharded):
            split_index(index, sharded, args.shards)
    split_seconds = watch.seconds
    del index
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-", dir=work))
    try:
        one = launch(args, Path(args.index), 1, tmp / "one.json")
        many = launch(args, sharded, args.shards, tmp / "many.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(one["rows"])
    same = float(np.mean([np.array_equal(a, b) for a, b in zip(one.pop("rows"), many.pop("rows"),
                                                               strict=True)]))
    figures = {"index": args.index, "queries": n, "k": args.k, "batch": args.batch,
               "split_seconds": round(split_seconds, 1), "one": one, "sharded": many,
               "queries_per_s": {"one": round(n / one["seconds"], 1),
                                 "sharded": round(n / many["seconds"], 1)},
               "same_results": same,
               "memory_ratio": round(max(many["rss_after_load_mib"]) /
                                     max(one["rss_after_load_mib"]), 3)}
    print(f"{n} queries, k={args.k}: 1 process {figures['queries_per_s']['one']} q/s, "
          f"RSS after load {one['rss_after_load_mib'][0]} MiB; {args.shards} processes "
          f"{figures['queries_per_s']['sharded']} q/s, RSS after load {many['rss_after_load_mib']} "
          f"MiB (ratio {figures['memory_ratio']}); same results for {same:.0%} of queries")
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    run(main)
