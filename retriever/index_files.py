"""The index directory on disk: what :class:`~retriever.index.DenseIndex` saves and loads.

Layout of an index directory (written to a temporary directory and renamed into place)::

    manifest.json       encoder identity, dimension, count, index type, metric, passage shards
    index.faiss         the FAISS index (FAISS's own binary format)
    passages/*.arrow    passage table (id, title, text), memory-mapped; FAISS id = row number
    removed.npy         rows removed by hot-swapping (int64), if any
    vectors.npy         every row's float32 vector (rows, D), if the index re-ranks (IVF-PQ with
                        rerank, ``retriever.rerank``); the manifest then names it ("vectors")
    sparse/             BM25 over the passages (``retriever.sparse``), if built; the manifest
                        then names it ("sparse") and the hybrid settings ("fusion")

Reading checks every part: an incomplete, corrupt or foreign directory raises :class:`UserError`
naming the file at fault.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from datasets import Dataset

from rag.common.artefact import inside
from rag.common.atomic import atomic_directory
from rag.common.errors import UserError

from .corpus import open_shards, write_arrow
from .fusion import FusionConfig
from .index_factory import IndexConfig, faiss
from .rerank import VECTORS_FILE, FullVectors
from .sparse import SPARSE_DIR, SparseIndex

FORMAT = "ragqa-index"
VERSION = 1


class StoredIndex(NamedTuple):
    """The parts of an index directory, as :func:`read_index` returns them."""

    index: faiss.Index
    passages: Dataset
    manifest: dict
    removed: np.ndarray | None  # removed.npy, if any
    shard_files: list[Path]  # the Arrow files backing ``passages``
    sparse: SparseIndex | None
    full: FullVectors | None  # vectors.npy, memory-mapped, if the index re-ranks


def new_manifest(encoder_identity: dict, n: int, config: IndexConfig) -> dict:
    """The manifest of an index of ``n`` passages built by the encoder of ``encoder_identity``."""
    return {
        "format": FORMAT, "version": VERSION, "encoder": encoder_identity,
        "question_encoders": [encoder_identity["fingerprint"]], "dim": encoder_identity["dim"],
        "count": n, "rows": n, "index_type": config.index_type, "metric": "inner_product",
        "index_config": asdict(config),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def arrow_files(passages: Dataset) -> tuple[Dataset, list[Path], Path | None]:
    """``passages`` as a table whose Arrow files hold its rows in order (the files an index
    directory stores), those files, and the temporary directory they were written to, if they
    had to be: for a ``select``/``shuffle`` view or a slice (None for a table read from its own
    files, as ``retriever.corpus.load_corpus`` returns)."""
    if not _is_view(passages):
        return passages, _backing_files(passages), None
    temp = Path(tempfile.mkdtemp(prefix="ragqa-passages-"))
    write_arrow(iter(passages), temp / "00000.arrow")
    passages = open_shards([temp / "00000.arrow"])
    return passages, _backing_files(passages), temp


def write_index(out_dir: Path, index: faiss.Index, shard_files: list[Path], manifest: dict,
                removed: np.ndarray, sparse: SparseIndex | None,
                full: FullVectors | None = None) -> list[str]:
    """Write an index directory atomically (temp dir next to it, then rename): the Arrow files
    ``shard_files`` in order (hard-linked where possible), ``index``, the ``removed`` rows if any,
    the sparse side if any, the ``full`` vectors if any (hard-linked when they are one file: it
    is never written to again) and ``manifest`` naming the shards and the vectors file. Returns
    the shards' names."""
    with atomic_directory(out_dir, kind="index") as tmp:
        (tmp / "passages").mkdir()
        names = []
        for i, src in enumerate(shard_files):
            name = f"passages/{i:05d}.arrow"
            _link_or_copy(src, tmp / name)
            names.append(name)
        faiss.write_index(index, str(tmp / "index.faiss"))
        if sparse is not None:
            sparse.save(tmp / SPARSE_DIR)
        if len(removed):
            np.save(tmp / "removed.npy", removed)
        named = {"passage_shards": names}
        if full is not None:
            if len(full.files) == 1:
                _link_or_copy(full.files[0], tmp / VECTORS_FILE)
            else:
                full.save(tmp / VECTORS_FILE)
            named["vectors"] = VECTORS_FILE
        (tmp / "manifest.json").write_text(json.dumps({**manifest, **named}, indent=2))
    return names


def read_index(index_dir: Path, mmap: bool = False) -> StoredIndex:
    """Read and check an index directory (see the module doc); with ``mmap`` the FAISS index is
    memory-mapped read-only (``DenseIndex.load``)."""
    if not index_dir.is_dir():
        raise UserError(f"{index_dir}: no such index directory")
    if (index_dir / "shards.json").is_file():  # retriever.shards.SHARDS_FILE
        raise UserError(f"{index_dir}: a sharded index, which this needs whole (ragqa ask, "
                        "eval-retrieval, benchmark and finetune search sharded indexes)")
    manifest_file = index_dir / "manifest.json"
    manifest = _read_manifest(manifest_file)
    files = ([inside(index_dir, "index.faiss", manifest_file)]
             + [inside(index_dir, s, manifest_file) for s in manifest["passage_shards"]])
    for f in files:
        if not f.is_file():
            raise UserError(f"{index_dir}: incomplete index directory (missing {f.name})")
    index = _read_faiss(files[0], manifest, mmap)
    try:
        if index.d != manifest["dim"] or index.ntotal != manifest[
                "rows" if manifest["index_type"] == "hnsw" else "count"]:
            raise UserError(f"{index_dir}: index.faiss does not match manifest.json")
        config = IndexConfig(**manifest["index_config"])
    except (KeyError, TypeError) as err:
        raise UserError(f"{manifest_file}: missing or wrong field ({err})") from None
    removed = _read_removed(inside(index_dir, "removed.npy", manifest_file))
    full = _read_full(index_dir, manifest) if config.rerank else None
    try:
        passages = open_shards(files[1:])
    except (pa.ArrowException, OSError, ValueError) as err:
        raise UserError(f"{index_dir}: a passage shard is not a readable Arrow file "
                        f"({type(err).__name__})") from None
    sparse = None
    if "sparse" in manifest:
        sparse = SparseIndex.load(index_dir, manifest["sparse"], rows=manifest["rows"])
        try:  # the saved hybrid settings, checked as the flags are
            FusionConfig(**manifest.get("fusion", {}))
        except (TypeError, UserError) as err:
            raise UserError(f"{manifest_file}: bad fusion settings ({err})") from None
    return StoredIndex(index, passages, manifest, removed, files[1:], sparse, full)


def _read_manifest(manifest_file: Path) -> dict:
    """manifest.json, checked to be ours and to list its passage shards."""
    if not manifest_file.is_file():
        raise UserError(f"{manifest_file.parent}: incomplete index directory (no manifest.json)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{manifest_file}: not valid JSON") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_file}: not a ragqa index manifest")
    shards = manifest.get("passage_shards")
    if not shards or not isinstance(shards, list):
        raise UserError(f"{manifest_file}: lists no passage shards")
    return manifest


def _read_faiss(path: Path, manifest: dict, mmap: bool) -> faiss.Index:
    flags = 0
    if mmap:  # IVF-PQ maps its inverted lists; flat and HNSW their vectors
        flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP if manifest.get("index_type") ==
                                           "ivfpq" else faiss.IO_FLAG_MMAP_IFC)
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError:  # FAISS's message is a C++ trace; the file is what matters
        raise UserError(f"{path}: not a readable FAISS index (corrupt or truncated)") from None


def _read_full(index_dir: Path, manifest: dict) -> FullVectors:
    """The re-ranking vectors the manifest names, memory-mapped and checked (rows, D) float32."""
    manifest_file = index_dir / "manifest.json"
    if "vectors" not in manifest:
        raise UserError(f"{manifest_file}: the index re-ranks (rerank) but names no vectors file")
    path = inside(index_dir, manifest["vectors"], manifest_file)
    if not path.is_file():
        raise UserError(f"{index_dir}: incomplete index directory (missing {path.name})")
    return FullVectors.open(path, int(manifest["rows"]), int(manifest["dim"]))


def _read_removed(path: Path) -> np.ndarray | None:
    """The hot-swapped-out rows (R,) int64 in ``removed.npy``, or None without one."""
    if not path.exists():
        return None
    try:
        removed = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise UserError(f"{path}: not a readable array (corrupt or truncated)") from None
    if removed.ndim != 1 or removed.dtype != np.int64:
        raise UserError(f"{path}: expected a 1-D int64 array, got {removed.dtype} "
                        f"{removed.shape}")
    return removed


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _backing_files(passages: Dataset) -> list[Path]:
    files = [Path(f["filename"]) for f in passages.cache_files]
    if not files:
        raise ValueError("passages must be an Arrow-backed table (see retriever.corpus.load_corpus)")
    return files


def _is_view(passages: Dataset) -> bool:
    """Whether ``passages`` shows other rows than its Arrow files hold, in their order (a
    ``select``/``shuffle`` view, or a slice, as a contiguous ``select`` gives)."""
    if passages._indices is not None:
        return True
    return len(passages) != sum(len(Dataset.from_file(str(f))) for f in _backing_files(passages))
