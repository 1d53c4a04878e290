"""How the dense index types scale: real queries among synthetic distractors.

Corpora of --sizes vectors: the passage vectors of --real_index at spread-out rows, the rest drawn
from a Gaussian with their mean and covariance (scaled to their length when they all have one, as
a normalising encoder's do), so that distractors look like passages, not noise. Each is written in
chunks to a memory-mapped .npy under --work (scale_data.py) and reused while its recipe holds; so
are the queries (--queries questions of --questions, encoded by the real index's encoder) and
the ground truth (their exact top-k by inner product).

Each index (--types; IVF-PQ once per --pq_m) is built from the memory-mapped vectors by
DenseIndex.build, saved, and measured by each function of MEASUREMENTS: bytes on disk; RSS after
DenseIndex.load(dir), after DenseIndex.load(dir, mmap=True) and after searching the queries, each
in a fresh process (forked from a helper forked before any work) less its RSS before loading
(VmRSS, Linux); queries/s searching the whole batch in one call (FAISS's default threads) and one
at a time (the first --single_queries); recall@k = mean |found & exact| / k, and the same over the
real passages of the exact top-k. Settings: HNSW efSearch --hnsw_ef (set through index.config,
which DenseIndex.search_knn reads at each call), IVF-PQ nprobe --nprobe (on ivf_of(index.index))
and, with --rerank (full vectors on disk, memory-mapped), each depth N at each nprobe (0: none),
reading N * D * 4 bytes a query ("searched_anon": RSS less file pages); --opq: OPQ's rotation. HNSW
is not built above --hnsw_max vectors; its build time there is extrapolated (N log N) from a
smaller size of the same run. Targets, PASS/MISS per size: HNSW >= 10x flat's batch queries/s at
recall@10 >= 0.95; IVF-PQ index.faiss <= 1/8 of flat's at recall@10 >= 0.9; re-ranked IVF-PQ's RSS
after loading <= 1/8 of flat's at recall@10 >= 0.95.

Example:
    python scripts/perf_scale.py --real_index runs/index-l6 --sizes 1000000 \
        --json runs/scale/bench-1m.json
"""

from __future__ import annotations

import gc
import logging
import math
import os
import platform
import resource
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path

import faiss
import numpy as np
from measure import MiB, Stopwatch, process_rss  # this directory: the perf scripts' one set
from scale_data import cached, exact_top_k, load_queries, make_corpus
from scale_report import rerank_targets, table, targets

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, write_json
from rag.common.errors import UserError, require
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option
from rag.common.questions import read_questions
from retriever.corpus import open_shards
from retriever.index import DenseIndex
from retriever.index_factory import INDEX_TYPES, IndexConfig, ivf_of

log = logging.getLogger("perf_scale")
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Args:
    real_index: str = option(
        "runs/index-l6", "index directory (flat or HNSW) of the real corpus: its vectors, passage ids "
        "and encoder")
    questions: str = option(
        "../shared/data/squad-open/dev.json", "questions (any format ragqa reads); a seeded sample of "
        "them are the queries")
    queries: int = option(1000, "how many questions to sample as queries", within=POSITIVE)
    sizes: list[int] = option([1_000_000, 10_000_000], "corpus sizes N", within=POSITIVE)
    types: list[str] = option(list(INDEX_TYPES), "index types to measure")
    hnsw_ef: list[int] = option([16, 64, 256], "HNSW efSearch settings", within=POSITIVE)
    nprobe: list[int] = option([8, 32, 128], "IVF-PQ nprobe settings", within=POSITIVE)
    pq_m: list[int] = option([48, 96], "IVF-PQ sub-quantisers: one index each", within=POSITIVE)
    opq: bool = option(False, "IVF-PQ indexes rotate the vectors by OPQ before quantising")
    rerank: list[int] = option(
        [0], "IVF-PQ re-ranking depths N measured at each nprobe (0 = none); any N > 0 keeps the "
        "full vectors on disk", within=NON_NEGATIVE)
    ivf_nlist: int = option(
        0, "IVF-PQ cells; 0 = the product's default (about 4 sqrt(N)), whose k-means takes hours at "
        "10M on a few cores", within=NON_NEGATIVE)
    hnsw_max: int = option(2_000_000, "build HNSW only for corpora of at most this many vectors",
        within=NON_NEGATIVE)
    k: int = option(10, "neighbours per query (recall@k)", within=POSITIVE)
    single_queries: int = option(
        200, "queries searched one at a time for single-query q/s (HNSW, IVF-PQ)", within=POSITIVE)
    seed: int = option(0, "seed of the query sample, of the real rows' places and of the distractors",
        within=NON_NEGATIVE)
    work: str = option(
        "runs/scale", "folder for the corpora, queries, ground truth and (while measured) indexes")
    keep_indexes: bool = option(False, "keep the built index directories under --work")
    json: str | None = option(None, "write all figures here (rewritten after each index)")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class Case:
    """One saved index of one corpus: what each measurement gets."""

    args: Args
    size: int
    name: str  # "flat", "hnsw", "ivfpq-m48", ...
    config: IndexConfig
    dir: Path
    queries_file: Path  # the queries (Q, D) float32, for the memory probe
    queries: np.ndarray  # (Q, D) float32
    truth: np.ndarray  # (Q, k) int64 rows of the exact top-k
    real_rows: np.ndarray  # rows holding the real passages, sorted
    probe: Connection  # to the memory probe's helper (probe_server)


# ---------------------------------------------------------------------------------- measurements
def measure_disk(case: Case) -> dict:
    faiss_bytes = (case.dir / "index.faiss").stat().st_size
    return {"index_bytes": faiss_bytes, "bytes_per_vector": round(faiss_bytes / case.size, 1),
            "dir_bytes": sum(f.stat().st_size for f in case.dir.rglob("*") if f.is_file())}


def _anon_rss() -> int:
    """Bytes of this process's resident memory that are not file pages (RssAnon, Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def _probe_once(index_dir: str, queries: str, k: int, mmap: bool) -> dict:
    q, base, base_anon = np.load(queries), process_rss(), _anon_rss()
    index = DenseIndex.load(index_dir, mmap=mmap)
    loaded = process_rss()
    index.search_knn(q, k)
    return {"loaded": loaded["VmRSS"] - base["VmRSS"], "peak": loaded["VmHWM"] - base["VmRSS"],
            "searched": process_rss()["VmRSS"] - base["VmRSS"],
            "searched_anon": _anon_rss() - base_anon}


def probe_server(conn: Connection) -> None:
    """The memory probe's helper, forked before any work: for each job it receives, a child
    forked from it (a fresh process with only the imports done) measures and answers."""
    while (job := conn.recv()) is not None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                conn.send(_probe_once(**job))
                code = 0
            finally:
                os._exit(code)
        if os.waitpid(pid, 0)[1]:  # died (out of memory?): no answer
            conn.send(None)


def measure_memory(case: Case) -> dict:
    out = {}  # MiB after DenseIndex.load (peak: its highest), then after searching the queries
    for mode, mmap in (("ram", False), ("mmap", True)):
        case.probe.send({"index_dir": str(case.dir), "queries": str(case.queries_file),
                         "k": case.args.k, "mmap": mmap})
        got = case.probe.recv()
        if got is None:
            raise RuntimeError(f"the memory probe failed on {case.dir} (mmap={mmap})")
        out[mode] = {key: round(value / MiB, 1) for key, value in got.items()}
    return {"rss_mib": out}


def measure_search(case: Case) -> dict:
    index, k, q, kind = DenseIndex.load(case.dir), case.args.k, case.queries, case.config.index_type
    settings = {"flat": [("exact", None)],
                "hnsw": [(f"efSearch={ef}", ef) for ef in case.args.hnsw_ef],
                "ivfpq": [(f"nprobe={p}" + (f" rerank={n}" if n else ""), (p, n))
                          for p in case.args.nprobe for n in case.args.rerank]}[kind]
    real = np.isin(case.truth, case.real_rows)  # (Q, k)
    rows = []
    for label, value in settings:
        if kind == "hnsw":
            index.config = replace(index.config, hnsw_ef_search=value)
        elif kind == "ivfpq":
            ivf_of(index.index).nprobe = value[0]
            index.config = replace(index.config, rerank=value[1])
        index.search_knn(q[:10], k)  # warm-up
        with Stopwatch() as watch:
            _, found = index.search_knn(q, k)
        row = {"setting": label, "qps_batch": round(len(q) / watch.seconds, 1)}
        if kind == "ivfpq" and index.full is not None:  # the candidates' vectors, read from disk
            row["vector_bytes_per_query"] = max(value[1], k) * q.shape[1] * 4
        hit = np.array([np.isin(t, f) for f, t in zip(found, case.truth, strict=True)])  # (Q, k)
        row[f"recall_at_{k}"] = round(float(hit.mean()), 4)
        row[f"real_recall_at_{k}"] = round(float(hit[real].mean()), 4) if real.any() else None
        if kind != "flat":
            one_by_one = q[: case.args.single_queries]
            with Stopwatch() as watch:
                for i in range(len(one_by_one)):
                    index.search_knn(one_by_one[i : i + 1], k)
            row["qps_single"] = round(len(one_by_one) / watch.seconds, 1)
        rows.append(row)
    return {"search": rows, **({"nlist": ivf_of(index.index).nlist} if kind == "ivfpq" else {})}


# One function per measured aspect: each gets a built, saved index (a Case) and returns figures for
# that index's entry of the report. To add a section (e.g. sharded search over 2 processes against
# 1), write one more such function and list it here.
MEASUREMENTS: list[Callable[[Case], dict]] = [measure_disk, measure_memory, measure_search]


# ------------------------------------------------------------------------------------ the runs
def variants(args: Args) -> list[tuple[str, IndexConfig]]:
    out = [(kind, IndexConfig(index_type=kind)) for kind in ("flat", "hnsw") if kind in args.types]
    if "ivfpq" in args.types:
        opq = "-opq" if args.opq else ""
        out += [(f"ivfpq{opq}-m{m}", IndexConfig(index_type="ivfpq", pq_m=m, ivf_nlist=args.ivf_nlist,
                                                  opq=args.opq, rerank=max(args.rerank)))
                for m in args.pq_m]
    return out


def perf_size(args: Args, size: int, real: DenseIndex, queries_file: Path, qrecipe: dict,
               report: dict, hnsw_rate: dict, probe: Connection) -> None:
    """Measure every index variant on the corpus of ``size`` vectors into ``report["runs"]``."""
    out = Path(args.work) / f"n{size}"
    out.mkdir(parents=True, exist_ok=True)
    entry = report["runs"].setdefault(str(size), {"phases_s": {}, "indexes": []})
    watch = Stopwatch()
    live = np.setdiff1d(np.arange(int(real.manifest["rows"])), real.removed)
    ids = list(real.passages.select(live)["id"])
    recipe = {"version": RECIPE_VERSION, "size": size, "seed": args.seed, "real": {
        "index": str(Path(args.real_index).resolve()), "created": real.manifest["created"],
        "encoder": real.manifest["encoder"]["fingerprint"], "count": len(live)}}
    rows = np.sort(np.random.default_rng(args.seed).choice(size, len(live), replace=False))
    vectors, passages_file = make_corpus(args.seed, size, real.vectors(live), ids, rows, recipe, out)
    entry["phases_s"]["corpus"] = round(watch.seconds, 1)
    with Stopwatch() as watch:
        queries = np.load(queries_file)
        truth = np.load(cached(out / f"truth-k{args.k}.npy", {"corpus": recipe, "queries": qrecipe},
                               lambda tmp: np.save(tmp, exact_top_k(vectors, queries, args.k))))
    entry["phases_s"]["ground_truth"] = round(watch.seconds, 1)
    log.info("n=%d: phases %s", size, entry["phases_s"])
    passages = open_shards([passages_file])
    for name, config in variants(args):
        row = {"index": name, "config": asdict(config), "phases_s": {}}
        entry["indexes"].append(row)
        if config.index_type == "hnsw" and size > args.hnsw_max:
            row["skipped"] = hnsw_skip_reason(size, args.hnsw_max, hnsw_rate)
            log.info("n=%d: %s", size, row["skipped"])
            continue
        log.info("n=%d: building %s", size, name)
        with Stopwatch() as watch:
            built = DenseIndex.build(vectors, passages, real.manifest["encoder"], config)
        row["build_s"] = row["phases_s"]["build"] = round(watch.seconds, 1)
        with Stopwatch() as watch:
            built.save(out / f"index-{name}", overwrite=True)
        row["phases_s"]["save"] = round(watch.seconds, 1)
        del built
        gc.collect()
        if config.index_type == "hnsw":
            hnsw_rate.update(size=size, build_s=row["build_s"])
        case = Case(args, size, name, config, out / f"index-{name}", queries_file, queries, truth, rows,
                    probe)
        for measure in MEASUREMENTS:
            with Stopwatch() as watch:
                row.update(measure(case))
            row["phases_s"][measure.__name__] = round(watch.seconds, 1)
            gc.collect()
        log.info("n=%d: %s: phases %s", size, name, row["phases_s"])
        if not args.keep_indexes:
            shutil.rmtree(case.dir)
        if args.json:
            write_json(args.json, report)


def hnsw_skip_reason(size: int, limit: int, rate: dict) -> str:
    why = f"HNSW skipped: {size:,} vectors > --hnsw_max {limit:,}"
    if not rate:
        return why + " (no HNSW build measured in this run to extrapolate from)"
    n, t = rate["size"], rate["build_s"]
    hours = t * size / n * math.log(size) / math.log(n) / 3600
    return why + f"; at the rate measured at {n:,} ({t:.0f}s) its build would take ~{hours:.1f} h"


def check(args: Args) -> tuple[DenseIndex, list[str]]:
    """Refuse bad options before any work; return the real index and the questions."""
    for flag in ("sizes", "hnsw_ef", "nprobe", "pq_m", "rerank"):
        require(bool(getattr(args, flag)), flag, getattr(args, flag), "must name one or more")
    require(bool(args.types) and set(args.types) <= set(INDEX_TYPES), "types", args.types,
            f"must be among {', '.join(INDEX_TYPES)}")
    work = Path(args.work).absolute()
    if work.exists() and not work.is_dir():
        raise UserError(f"{args.work}: exists and is not a directory (--work)")
    parent = next(p for p in (work, *work.parents) if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{args.work}: cannot write in {parent} (--work)")
    if args.json:
        check_output_parent(args.json)
    real = DenseIndex.load(args.real_index)
    if real.config.index_type == "ivfpq":
        raise UserError(f"{args.real_index}: an IVF-PQ index holds approximate vectors: give a flat "
                        "or HNSW index as --real_index")
    dim = int(real.manifest["dim"])
    if "ivfpq" in args.types:
        require(all(dim % m == 0 for m in args.pq_m), "pq_m", args.pq_m, f"must divide the dimension {dim}")
    require(min(args.sizes) >= len(real), "sizes", args.sizes,
            f"must each hold the {len(real)} real passages of {args.real_index}")
    require(args.k <= len(real), "k", args.k, f"must be at most {len(real)}")
    questions = [q.question for q in read_questions(args.questions, require_answers=False)]
    require(args.queries <= len(questions), "queries", args.queries,
            f"must be at most the {len(questions)} questions of {args.questions}")
    return real, questions


def main() -> None:
    (args,) = parse([Args], description=__doc__)
    real, questions = check(args)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpu_threads": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                          "platform": platform.platform(), "faiss": faiss.__version__},
              "args": asdict(args), "runs": {}}
    probe, server_end = get_context("fork").Pipe()
    helper = get_context("fork").Process(target=probe_server, args=(server_end,), daemon=True)
    helper.start()  # now, while this process holds only its imports
    total = Stopwatch()
    try:
        queries_file, qrecipe = load_queries(args.questions, questions, args.queries, args.seed, real,
                                               Path(args.work))
        report["queries_s"] = round(total.seconds, 1)
        hnsw_rate: dict = {}
        for size in sorted(set(args.sizes)):
            perf_size(args, size, real, queries_file, qrecipe, report, hnsw_rate, probe)
    finally:
        probe.send(None)
        helper.join()
    report["targets"] = targets(report, args.k) + rerank_targets(report, args.k)
    report["total_s"] = round(total.seconds, 1)
    report["peak_rss_mib"] = {  # ru_maxrss is in KiB on Linux; children: the largest memory probe
        "main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "probes": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}
    print(table(report, args.k))
    print("\n".join(report["targets"]))
    print(f"peak RSS: main process {report['peak_rss_mib']['main']:.0f} MiB, memory probes "
          f"{report['peak_rss_mib']['probes']:.0f} MiB; total {report['total_s']:.0f}s")
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    run(main)
