"""Passage corpora: read DPR TSV, JSONL, SQuAD JSON or the datasets ecosystem's forms (Parquet
files, ``Dataset.save_to_disk`` directories, in-memory ``Dataset`` objects) into a memory-mapped
Arrow table.

Every reader yields ``{"id", "title", "text"}`` rows and checks them as it goes: a missing field,
a non-UTF-8 byte, an empty text or a duplicate id raises :class:`UserError` naming file and row.
Columnar corpora need a ``text`` column; ``title`` is optional, and so is ``id``: without it a
passage's id is its row number from 0 (as transformers' ``RagRetriever`` numbers them). Other
columns are ignored, except that :func:`corpus_embeddings` reads an ``embeddings`` column (a
``RagRetriever`` custom dataset's), so such a corpus can be indexed without re-encoding.
The rows are streamed into an Arrow file that :class:`datasets.Dataset` memory-maps, so memory does
not grow with the corpus (DPR's 21M-passage Wikipedia is 13 GB of text).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

from rag.common.atomic import atomic_file, remove_with
from rag.common.errors import UserError
from rag.common.jsonl import json_lines, load_json, utf8_lines
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option
from rag.common.questions import collapse_ws

SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])


@dataclass(frozen=True)
class CorpusConfig:
    """How a corpus file is read into passages."""

    passage_words: int = option(
        0, "split each document into passages of this many words (DPR: 100); 0 = keep", within=NON_NEGATIVE)
    batch_rows: int = option(10_000, "rows per Arrow record batch while streaming to disk", within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir() and corpus_format(path) == "datasets":
        return path
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path


def _read_tsv(path: Path) -> Iterator[dict]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(utf8_lines(path), delimiter="\t", quotechar='"')
    header = next(reader, None)
    if header is None:
        raise UserError(f"{path}: empty file")
    cols = [h.strip().lower() for h in header]
    missing = {"id", "text"} - set(cols)
    if missing:
        raise UserError(f"{path}: header {header!r} lacks column(s) {sorted(missing)}")
    i_id, i_text = cols.index("id"), cols.index("text")
    i_title = cols.index("title") if "title" in cols else None
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) < len(cols):
            raise UserError(f"{path}: line {line}: {len(row)} field(s), expected {len(cols)}")
        title = row[i_title] if i_title is not None else ""
        yield {"id": row[i_id], "title": title, "text": row[i_text], "_where": f"line {line}"}


def _read_jsonl(path: Path) -> Iterator[dict]:
    for lineno, obj in json_lines(path):
        for field in ("id", "text"):
            if field not in obj:
                raise UserError(f"{path}: line {lineno}: missing field {field!r}")
        yield {
            "id": str(obj["id"]),
            "title": str(obj.get("title", "")),
            "text": str(obj["text"]),
            "_where": f"line {lineno}",
        }


def _read_squad(path: Path) -> Iterator[dict]:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UserError(f"{path}: not SQuAD v1.1 JSON (no top-level 'data' list)")
    for a, article in enumerate(data["data"]):
        title = str(article.get("title", "")).replace("_", " ")
        for p, para in enumerate(article.get("paragraphs", [])):
            if "context" not in para:
                raise UserError(f"{path}: data[{a}].paragraphs[{p}]: missing field 'context'")
            yield {
                "id": f"{a}-{p}",
                "title": title,
                "text": collapse_ws(para["context"]),
                "_where": f"data[{a}].paragraphs[{p}]",
            }


def _columnar_rows(source: object, names: list[str], batches: Iterator[dict[str, list]]
                   ) -> Iterator[dict]:
    """Rows of a columnar corpus: ``names`` its columns, ``batches`` column dicts in order."""
    if "text" not in names:
        raise UserError(f"{source}: no 'text' column (it has {', '.join(names) or 'none'})")
    row = 0
    for batch in batches:
        size = len(batch["text"])
        titles = batch.get("title") or [""] * size
        ids = batch.get("id") or [str(row + i) for i in range(size)]
        for id_, title, text in zip(ids, titles, batch["text"], strict=True):
            row += 1
            yield {"id": "" if id_ is None else str(id_), "title": "" if title is None else str(title),
                   "text": "" if text is None else str(text), "_where": f"row {row}"}


def _read_parquet(path: Path) -> Iterator[dict]:
    try:
        pf = pq.ParquetFile(str(path))
        names = pf.schema_arrow.names
        columns = [c for c in SCHEMA.names if c in names]
        batches = (b.to_pydict() for b in pf.iter_batches(batch_size=10_000, columns=columns))
        yield from _columnar_rows(path, names, batches)
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{path}: not a readable Parquet file ({err})") from None


def _read_dataset(dataset: Dataset, source: object) -> Iterator[dict]:
    columns = [c for c in SCHEMA.names if c in dataset.column_names]
    yield from _columnar_rows(source, dataset.column_names,
                              dataset.select_columns(columns).iter(batch_size=10_000))


def _load_saved(path: Path) -> Dataset:
    """A ``save_to_disk`` directory as a memory-mapped Dataset (a DatasetDict: its one split)."""
    try:
        loaded = load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as err:
        raise UserError(f"{path}: not a readable datasets directory ({err})") from None
    if isinstance(loaded, DatasetDict):
        if len(loaded) != 1:
            raise UserError(f"{path}: a DatasetDict with splits {sorted(loaded)}: give one split's "
                            f"directory (e.g. {path / sorted(loaded)[0]})")
        loaded = next(iter(loaded.values()))
    return loaded


def _read_saved_dataset(path: Path) -> Iterator[dict]:
    yield from _read_dataset(_load_saved(path), path)


def corpus_format(path: Path) -> str:
    """``tsv``, ``jsonl``, ``squad``, ``parquet`` or ``datasets`` (a ``save_to_disk`` directory)."""
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "datasets"
        raise UserError(f"{path}: a directory, but not one written by datasets' save_to_disk")
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".tsv", ".tsv.txt", ".csv")):
        return "tsv"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "squad"
    raise UserError(f"{path}: unknown corpus format (expected .tsv, .jsonl, SQuAD .json, .parquet "
                    "or a datasets save_to_disk directory)")


def split_words(text: str, n: int) -> list[str]:
    """Split ``text`` into consecutive chunks of ``n`` words, as DPR cut Wikipedia into passages."""
    words = text.split()
    return [" ".join(words[i : i + n]) for i in range(0, len(words), n)] or [""]


def iter_passages(path: str | os.PathLike | Dataset, config: CorpusConfig = CorpusConfig()
                  ) -> Iterator[dict]:
    """Yield checked ``{"id", "title", "text"}`` rows from a corpus file, a datasets directory or
    an in-memory :class:`datasets.Dataset` (see the module doc)."""
    if isinstance(path, Dataset):
        source = f"dataset {path.info.dataset_name or path._fingerprint}"
        rows = _read_dataset(path, source)
    else:
        source = _check_file(path)
        reader = {"tsv": _read_tsv, "jsonl": _read_jsonl, "squad": _read_squad,
                  "parquet": _read_parquet, "datasets": _read_saved_dataset}[corpus_format(source)]
        rows = reader(source)
    seen: set[str] = set()
    for row in rows:
        where = row.pop("_where")
        if not row["id"].strip():
            raise UserError(f"{source}: {where}: empty passage id")
        if not row["text"].strip():
            raise UserError(f"{source}: {where}: passage {row['id']!r} has an empty text")
        if row["id"] in seen:
            raise UserError(f"{source}: {where}: duplicate passage id {row['id']!r}")
        seen.add(row["id"])
        if config.passage_words > 0:
            for j, chunk in enumerate(split_words(row["text"], config.passage_words)):
                yield {"id": f"{row['id']}_{j}", "title": row["title"], "text": chunk}
        else:
            yield row


def corpus_embeddings(path: str | os.PathLike | Dataset, column: str = "embeddings") -> np.ndarray:
    """The passage vectors (N, D) float32 stored in a columnar corpus's ``column``, in row order."""
    source = "the dataset" if isinstance(path, Dataset) else _check_file(path)
    kind = "dataset" if isinstance(path, Dataset) else corpus_format(source)
    if kind not in ("dataset", "parquet", "datasets"):
        raise UserError(f"{source}: stored embeddings are read from a Parquet file or a datasets "
                        "directory, not from a .tsv, .jsonl or SQuAD file")
    dataset = None if kind == "parquet" else path if kind == "dataset" else _load_saved(source)
    names = pq.read_schema(str(source)).names if kind == "parquet" else dataset.column_names
    if column not in names:
        raise UserError(f"{source}: no {column!r} column (it has {', '.join(names)})")
    values = (pq.read_table(str(source), columns=[column]).column(column) if kind == "parquet"
              else dataset.with_format("arrow")[column])  # in row order, a selection respected
    try:
        vectors = np.stack(values.to_numpy(zero_copy_only=False)).astype(np.float32)
    except (ValueError, TypeError, pa.ArrowException) as err:
        raise UserError(f"{source}: column {column!r} is not a table of equal-length vectors "
                        f"({err})") from None
    if vectors.ndim != 2 or not np.isfinite(vectors).all():
        raise UserError(f"{source}: column {column!r} must hold finite vectors of one dimension")
    return vectors


def corpus_digest(path: str | os.PathLike | Dataset) -> str:
    """What a corpus is, for knowing whether saved work was made from it: the SHA-256 of a file,
    or of a directory's files (names and contents), or a ``Dataset``'s own fingerprint."""
    if isinstance(path, Dataset):
        return f"dataset:{path._fingerprint}"
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(str(file.relative_to(path)).encode() if file != path else b"")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_arrow(rows: Iterator[dict], arrow_path: str | os.PathLike, batch_rows: int = 10_000) -> int:
    """Stream rows into an Arrow IPC stream file (the format ``Dataset.from_file`` maps); returns count.

    Written to a temporary name and renamed, so a failure leaves no partial file.
    """
    arrow_path = Path(arrow_path)
    arrow_path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with (atomic_file(arrow_path) as tmp, pa.OSFile(str(tmp), "wb") as sink,
          pa.ipc.new_stream(sink, SCHEMA) as writer):
        buf: dict[str, list[str]] = {"id": [], "title": [], "text": []}
        for row in rows:
            for key in buf:
                buf[key].append(row[key])
            count += 1
            if len(buf["id"]) >= batch_rows:
                writer.write_batch(pa.record_batch(buf, schema=SCHEMA))
                buf = {key: [] for key in buf}
        if buf["id"]:
            writer.write_batch(pa.record_batch(buf, schema=SCHEMA))
    return count


def load_corpus(
    path: str | os.PathLike | Dataset,
    arrow_path: str | os.PathLike | None = None,
    config: CorpusConfig = CorpusConfig(),
) -> Dataset:
    """Read a corpus (file, datasets directory or ``Dataset``) into a memory-mapped
    :class:`datasets.Dataset` with columns id, title, text.

    ``arrow_path`` is where the Arrow file goes (default: a fresh temporary directory, deleted
    with the returned table).
    Raises :class:`UserError` for a missing, empty or malformed corpus.
    """
    temp = None
    if arrow_path is None:
        temp = Path(tempfile.mkdtemp(prefix="ragqa-corpus-"))
        arrow_path = temp / "passages.arrow"
    try:
        count = write_arrow(iter_passages(path, config), arrow_path, config.batch_rows)
        if count == 0:
            Path(arrow_path).unlink(missing_ok=True)
            raise UserError(f"{'the dataset' if isinstance(path, Dataset) else path}: the corpus "
                            "holds no passages")
        table = Dataset.from_file(str(arrow_path))
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    if temp is not None:
        remove_with(table, temp)
    return table


def open_shards(paths: list[Path]) -> Dataset:
    """Memory-map Arrow shards written by :func:`write_arrow` as one table, in order."""
    parts = [Dataset.from_file(str(p)) for p in paths]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
