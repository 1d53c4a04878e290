"""An index split by passage range into N shards, searched together by the processes of a
torch.distributed job, each holding one shard: the corpus is no longer bounded by one process's
memory.

Layout::

    INDEX/shards.json                 the build's id, the row count, each shard's directory,
                                      first row and row count
    INDEX/shard-00000-of-00002/       an ordinary index directory (``retriever.index_files``) of rows
    INDEX/shard-00001-of-00002/       [offset, offset + count), its manifest naming the build

A shard's FAISS ids are its own rows; its row r is the index's row offset + r. Every process opens
every shard's passages (memory-mapped Arrow, cheap), so passage ids, texts and gold matching use
the index's rows as for an unsharded index, and the FAISS (and BM25) side of its own shard only:
rank r of W holds shard r % N, W being 1 (one process holds all N) or a multiple of N (a shard's
W / N replicas split the questions).

Search is collective: every process calls it with its own questions, as many times.

- Dense: the question vectors are gathered; each shard searches them for its top k; the
  (score, row) lists are gathered and merged by score, then row. ``DenseIndex.search_knn`` orders
  and cuts ties the same way, so for flat and IVF-PQ indexes (one coarse quantizer, and OPQ
  rotation, for all shards) the result is the unsharded one exactly. HNSW shards are separate
  graphs. IVF-PQ shards that re-rank (``rerank``) each re-rank their own top candidates, exactly,
  against their own vectors file: the merge re-ranks a superset of the unsharded candidates.
- Stored vectors (scores with gradient, hybrid candidates): each shard fills the rows it holds
  and the requests are summed across processes.
- BM25: each shard's score matrix is cut from one built over the whole corpus (document
  frequencies and lengths are the corpus's), so its scores are the unsharded ones; top lists merge
  as the dense ones, and the best score of a question is the maximum over shards.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rag.common import collective
from rag.common.artefact import check_output_dir, inside
from rag.common.atomic import atomic_directory
from rag.common.errors import UserError

from .corpus import open_shards
from .fusion import union
from .index import DenseIndex, best_first, query_matrix, sparse_scores
from .index_factory import IndexConfig, trained_index
from .index_protocol import Index, IndexRows
from .sparse import SparseIndex, top_k

SHARDS_FILE = "shards.json"
FORMAT = "ragqa-sharded-index"
MISSING = np.finfo(np.float32).min  # FAISS's score of "no hit" (row -1) by inner product


def is_sharded(path: str | os.PathLike) -> bool:
    return (Path(path) / SHARDS_FILE).is_file()


def load_index(path: str | os.PathLike, mmap: bool = False) -> Index:
    """An index directory, sharded (:class:`ShardedIndex`, collective) or not (``DenseIndex``)."""
    return ShardedIndex.load(path, mmap) if is_sharded(path) else DenseIndex.load(path, mmap)


def shard_ranges(total: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous row ranges of near-equal size covering ``range(total)``."""
    if not 1 <= shards <= total:
        raise UserError(f"--shards {shards}: must be between 1 and the {total} passages")
    cuts = [round(i * total / shards) for i in range(shards + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def shard_name(i: int, shards: int) -> str:
    return f"shard-{i:05d}-of-{shards:05d}"


def write_shards(out_dir: str | os.PathLike, total: int, shards: int,
                 make_shard: Callable[[int, int], DenseIndex], overwrite: bool = False) -> None:
    """Write a sharded index of ``total`` rows atomically, shard by shard: ``make_shard(start,
    stop)`` builds the index of rows ``start:stop`` (one shard in memory at a time)."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite, "sharded-index")
    ranges = shard_ranges(total, shards)
    build = uuid.uuid4().hex
    entries = []
    with atomic_directory(out_dir, kind="sharded-index") as tmp:
        for i, (start, stop) in enumerate(ranges):
            shard = make_shard(start, stop)
            shard.manifest["shard"] = {"build": build, "index": i, "of": shards, "offset": start,
                                       "rows": stop - start}
            shard.save(tmp / shard_name(i, shards))
            entries.append({"dir": shard_name(i, shards), "offset": start, "rows": stop - start})
            del shard
        spec = {"format": FORMAT, "version": 1, "build": build, "rows": total, "shards": entries}
        (tmp / SHARDS_FILE).write_text(json.dumps(spec, indent=2))


def build_shards(vectors: np.ndarray, passages, identity: dict, config: IndexConfig, shards: int,
                 out_dir: str | os.PathLike, sparse: SparseIndex | None = None,
                 fusion: dict | None = None, overwrite: bool = False) -> None:
    """Index ``vectors`` (N, D; memory-mapped is best) of ``passages`` as ``shards`` shards by row
    range. IVF-PQ trains once, on a sample of all rows, so the shards share one coarse quantizer
    and their merged search is the unsharded one's; ``sparse``, a BM25 side over all rows, is cut
    (with the hybrid settings ``fusion``)."""
    trained = trained_index(vectors, config) if config.index_type == "ivfpq" else None

    def make_shard(start: int, stop: int) -> DenseIndex:
        shard = DenseIndex.build(vectors[start:stop], passages.select(range(start, stop)),
                                 identity, config, trained=trained)
        return with_sparse(shard, sparse, start, stop, fusion)

    write_shards(out_dir, len(passages), shards, make_shard, overwrite)


def split_index(index: DenseIndex, out_dir: str | os.PathLike, shards: int,
                overwrite: bool = False) -> None:
    """Write ``index`` as ``shards`` shards by row range: the same vectors, passages and BM25
    scores, so a search over the shards returns what one over ``index`` does (flat; an HNSW
    shard gets its own graph). IVF-PQ indexes are sharded when built (``build_index``)."""
    if index.config.index_type == "ivfpq":
        raise UserError("an IVF-PQ index is sharded when it is built (ragqa index --shards N "
                        "--index_type ivfpq), so that every shard shares its coarse quantizer")
    if len(index.removed):
        raise UserError(f"the index has {len(index.removed)} removed passages: rebuild it before "
                        "splitting")

    def make_shard(start: int, stop: int) -> DenseIndex:
        rows = np.arange(start, stop)
        shard = DenseIndex.build(index.vectors(rows), index.passages.select(rows),
                                 index.manifest["encoder"], index.config)
        shard.manifest["question_encoders"] = index.manifest["question_encoders"]
        return with_sparse(shard, index.sparse, start, stop, index.manifest.get("fusion"))

    write_shards(out_dir, int(index.manifest["rows"]), shards, make_shard, overwrite)


def with_sparse(shard: DenseIndex, sparse: SparseIndex | None, start: int, stop: int,
                fusion: dict | None) -> DenseIndex:
    """``shard`` (rows ``start:stop``) given its rows of ``sparse``, a BM25 side over the whole
    corpus, and the hybrid settings ``fusion``; unchanged when ``sparse`` is None."""
    if sparse is not None:
        shard.sparse = sparse.rows(start, stop)
        shard.manifest["sparse"] = shard.sparse.entry()
        shard.manifest["fusion"] = fusion
    return shard


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object")
    return data


class ShardedIndex(IndexRows):
    """This process's shards of a sharded index, and every shard's passages (module doc): an
    ``Index`` (``retriever.index_protocol``) whose rows are the index's rows, searched
    collectively, and read-only.
    """

    collective = True
    mmap = True  # read-only, as a memory-mapped index is

    def __init__(self, root: Path, manifest: dict, local: dict[int, DenseIndex],
                 offsets: list[int], passages, replica: tuple[int, int],
                 place: tuple[int, int] = (0, 1)):
        self.path = root  # the directory it was loaded from
        self.manifest = manifest
        self.local = local  # shard number -> its index, the shards this process searches
        self.offsets = offsets  # first row of each shard
        self.passages = passages
        self.replica = replica  # (which, of how many) processes holding the same shard
        self.rank, self.size = place  # this process in the job that searches together
        self.removed = np.zeros(0, dtype=np.int64)
        self.config = IndexConfig(**manifest["index_config"])
        self.sparse = next(iter(local.values())).sparse  # None when the shards have no BM25 side

    @classmethod
    def load(cls, root: str | os.PathLike, mmap: bool = False, alone: bool = False
             ) -> ShardedIndex:
        """Open this process's shards (memory-mapped with ``mmap``) and every shard's passages.
        A problem on any process is raised as :class:`UserError` on every process. ``alone``:
        this process opens every shard and searches alone, whatever job it is part of."""
        if alone:
            return cls._open(Path(root), mmap, (0, 1))
        index, error = None, None
        try:
            index = cls._open(Path(root), mmap, collective.world())
        except UserError as err:
            error = str(err)
        collective.agree(error)
        return index

    @classmethod
    def _open(cls, root: Path, mmap: bool, place: tuple[int, int]) -> ShardedIndex:
        spec = _read_json(root / SHARDS_FILE)
        entries = spec.get("shards")
        if spec.get("format") != FORMAT or not isinstance(entries, list) or not entries:
            raise UserError(f"{root / SHARDS_FILE}: not a {FORMAT} file")
        count = len(entries)
        rank, size = place
        if size > 1 and size % count:
            raise UserError(f"{root}: {count} shards need 1 process or a multiple of {count}; "
                            f"this job has {size} (launch with --nproc_per_node a multiple of "
                            f"{count}, or split the index again with ragqa index --split)")
        mine = range(count) if size == 1 else [rank % count]
        manifests, files, offsets = [], [], []
        for i, entry in enumerate(entries):
            where = inside(root, str(entry.get("dir")), root / SHARDS_FILE)
            manifest = _read_json(where / "manifest.json")
            expected = {"build": spec.get("build"), "index": i, "of": count,
                        "offset": entry.get("offset"), "rows": entry.get("rows")}
            if manifest.get("shard") != expected or manifest.get("rows") != entry.get("rows"):
                raise UserError(f"{where}: not shard {i} of the build {root / SHARDS_FILE} names "
                                "(shards from different builds, or changed since)")
            manifests.append(manifest)
            offsets.append(int(entry["offset"]))
            files += [inside(where, name, where / "manifest.json")
                      for name in manifest.get("passage_shards", [])]
        local = {i: DenseIndex.load(inside(root, entries[i]["dir"], root / SHARDS_FILE), mmap)
                 for i in mine}
        try:
            passages = open_shards(files)
        except Exception as err:  # noqa: BLE001 - any unreadable Arrow file is the user's
            raise UserError(f"{root}: a shard's passages are not readable Arrow files "
                            f"({type(err).__name__})") from None
        manifest = {k: v for k, v in manifests[0].items() if k not in ("shard", "passage_shards")}
        rows = sum(int(m["rows"]) for m in manifests)
        if rows != spec.get("rows") or len(passages) != rows:
            raise UserError(f"{root / SHARDS_FILE}: {spec.get('rows')} rows, the shards hold {rows}")
        manifest.update(count=rows, rows=rows, shards=count, build=spec["build"])
        replica = (0, 1) if size == 1 else (rank // count, size // count)
        return cls(root, manifest, local, offsets, passages, replica, place)

    # --------------------------------------------------------------- read-only
    def _check_writable(self) -> None:
        raise UserError(f"{self.path}: a sharded index is read-only (hot-swap its source index "
                        "and split it again)")

    def add(self, vectors: np.ndarray, rows: list[dict]) -> None:
        """Refused: a sharded index is read-only (:class:`UserError`)."""
        self._check_writable()

    def remove(self, passage_ids: list[str]) -> None:
        """Refused: a sharded index is read-only (:class:`UserError`)."""
        self._check_writable()

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> None:
        """Refused: a sharded index is read-only (:class:`UserError`)."""
        self._check_writable()

    # ------------------------------------------------------------------ search
    def _all(self, exchange, value):
        """``exchange`` (a ``collective`` function) of ``value`` with the processes that search
        together; alone, what it gives in a single process."""
        if self.size == 1:
            return [value] if exchange is not collective.all_sum else value
        return exchange(value)

    def _gather_questions(self, rows: np.ndarray) -> tuple[np.ndarray, slice]:
        """Every process's question rows (Q, ...) and this process's slice of them."""
        parts = self._all(collective.all_gather, rows)
        start = sum(len(p) for p in parts[: self.rank])
        return np.concatenate(parts), slice(start, start + len(rows))

    def _merge(self, scores: np.ndarray, rows: np.ndarray, k: int, mine: slice
               ) -> tuple[np.ndarray, np.ndarray]:
        """Gather every process's (Q, w) candidate lists; this process's questions' top k."""
        scores = np.concatenate(self._all(collective.all_gather, scores.T)).T
        rows = np.concatenate(self._all(collective.all_gather, rows.T)).T
        return best_first(scores[mine], rows[mine], k)

    def search_knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``DenseIndex.search_knn`` over every shard (collective; module doc)."""
        self.check_k(k)
        queries = query_matrix(queries, self.manifest["dim"])
        everyone, mine = self._gather_questions(queries)
        which, replicas = self.replica
        asked = np.arange(len(everyone))[which::replicas]  # a shard's replicas split the questions
        lists = []
        for i, shard in self.local.items():
            scores = np.full((len(everyone), k), MISSING, dtype=np.float32)
            rows = np.full((len(everyone), k), -1, dtype=np.int64)
            if len(asked):
                width = min(k, len(shard))
                found, local = shard.search_knn(everyone[asked], width)
                scores[asked, :width] = found
                rows[asked, :width] = np.where(local >= 0, local + self.offsets[i], -1)
            lists.append((scores, rows))
        return self._merge(np.hstack([s for s, _ in lists]), np.hstack([r for _, r in lists]),
                           k, mine)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors (n, D) of index rows (collective: each shard fills the rows it holds)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        everyone, mine = self._gather_questions(rows)
        out = np.zeros((len(everyone), self.manifest["dim"]), dtype=np.float32)
        if self.replica[0] == 0:  # one holder of each shard answers
            for i, shard in self.local.items():
                held = (everyone >= self.offsets[i]) & (everyone < self.offsets[i] + len(shard))
                out[held] = shard.vectors(everyone[held] - self.offsets[i])
        return self._all(collective.all_sum, out)[mine]

    def sparse_candidates(self, questions: list[str], width: int,
                          dense_rows: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``DenseIndex.sparse_candidates`` over every shard (collective; module doc)."""
        asked = self._all(collective.all_objects, questions)
        everyone = [q for part in asked for q in part]
        start = sum(len(p) for p in asked[: self.rank])
        mine = slice(start, start + len(questions))
        holder = self.replica[0] == 0
        tops, best, scores_of = [], np.full(len(everyone), -np.inf, dtype=np.float32), {}
        for i, shard in self.local.items():
            scores = sparse_scores(shard, everyone) if holder else None
            top = np.full((len(everyone), width), -1, dtype=np.int64)
            top_scores = np.full((len(everyone), width), -np.inf, dtype=np.float32)
            if holder:
                w = min(width, len(shard))
                local = top_k(scores, w)
                top[:, :w] = local + self.offsets[i]
                top_scores[:, :w] = np.take_along_axis(scores, local, 1)
                best = np.maximum(best, scores.max(axis=1))
                scores_of[i] = scores
            tops.append((top_scores, top))
        _, rows = self._merge(np.hstack([s for s, _ in tops]), np.hstack([r for _, r in tops]),
                              width, mine)
        best = np.concatenate(self._all(collective.all_gather, best[None])).max(axis=0)[mine]
        cand = rows if dense_rows is None else union(dense_rows, rows)
        # the BM25 scores of this process's candidates, from the shards that hold them
        pairs = np.stack([np.repeat(np.arange(start, start + len(cand)), cand.shape[1]),
                          cand.reshape(-1)], axis=1)
        wanted, own = self._gather_questions(pairs)
        values = np.zeros(len(wanted), dtype=np.float32)
        for i, scores in scores_of.items():
            held = (wanted[:, 1] >= self.offsets[i]) & (wanted[:, 1] < self.offsets[i] + scores.shape[1])
            values[held] = scores[wanted[held, 0], wanted[held, 1] - self.offsets[i]]
        values = self._all(collective.all_sum, values)[own].reshape(cand.shape)
        return cand, values, best

