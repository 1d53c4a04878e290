"""Batch encoding of questions and corpora with an :class:`~retriever.encoder.Encoder`.

Texts are tokenised once, sorted by token length (so each batch pads to nearly its own length),
encoded in batches under ``torch.inference_mode`` and put back in input order. A corpus is encoded
in fixed-size shards saved as ``.npy`` files; a killed run finds the finished shards and continues
where it stopped, and several processes (``accelerate launch``) split the shards between them.
Vectors reach FAISS through :func:`to_numpy32`, the one conversion to its input type.

Glossary: N texts, L tokens, D embedding dimension.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rag.common.atomic import atomic_file
from rag.common.options import POSITIVE, check_fields, option
from rag.common.progress import progress_bar

from .encoder import Encoder

log = logging.getLogger(__name__)
VECTORS = "vectors.npy"  # encode_corpus's result, in its work directory
HOST_COPY_ROWS = 4096  # encode_texts copies vectors to the host this many rows at a time


@dataclass(frozen=True)
class EncodeConfig:
    """How texts are encoded in batches: batch and shard sizes, precision, progress."""

    batch_size: int = option(64, "texts per forward pass", within=POSITIVE)
    shard_size: int = option(8192, "passages per resumable shard file", within=POSITIVE)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = option("auto", "auto: bf16 on GPU, fp32 on CPU")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:  # fail at argument parsing, not after reading the corpus
        check_fields(self)


def to_numpy32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """The one conversion to FAISS's input type: C-contiguous float32 numpy on the CPU, from a
    tensor (any device or dtype; detached) or an array (not copied when it already is one)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device`` (None = run in full precision)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _pad(batch: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (N, L)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (N, L)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    return input_ids.to(device), mask.to(device)


@torch.inference_mode()
def encode_texts(encoder: Encoder, texts: list[str], titles: list[str] | None = None,
                 config: EncodeConfig = EncodeConfig(), desc: str = "encoding",
                 bar=None) -> np.ndarray:
    """Encode texts (with titles: passages) into a float32 array (N, D), in input order; progress
    goes to ``bar`` when given (a caller's bar over more work), else to a bar of its own."""
    device = next(encoder.parameters()).device
    ids = encoder.tokenize(texts, titles, padding=False)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    pad_id = encoder.tokenizer.pad_token_id or 0
    amp = autocast_dtype(config.dtype, device)
    was_training = encoder.training
    encoder.eval()
    own = bar is None
    if own:
        bar = progress_bar(total=len(texts), desc=desc, enabled=config.progress, unit="text")
    held: list[torch.Tensor] = []  # vectors still on the device, and their rows
    held_rows: list[np.ndarray] = []
    for start in range(0, len(texts), config.batch_size):
        idx = order[start : start + config.batch_size]
        input_ids, mask = _pad([ids[i] for i in idx], pad_id, device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            held.append(encoder(input_ids, mask))
        held_rows.append(idx)
        # copied to the host every HOST_COPY_ROWS rows, not every batch: each copy waits for
        # the GPU to finish, and a wait per batch leaves it idle while the next batch is padded
        if sum(len(r) for r in held_rows) >= HOST_COPY_ROWS or start + config.batch_size >= len(texts):
            out[np.concatenate(held_rows)] = to_numpy32(torch.cat(held))
            held, held_rows = [], []
        bar.update(len(idx))
    if own:
        bar.close()
    encoder.train(was_training)
    return out


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as tmp:
        np.save(tmp, array)


def _shard_done(path: Path, rows: int, dim: int) -> bool:
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return arr.shape == (rows, dim)


def encode_corpus(encoder: Encoder, passages, work_dir: str | os.PathLike,
                  config: EncodeConfig = EncodeConfig(), accelerator=None) -> np.ndarray | None:
    """Encode a passage table (columns title, text) into (N, D) float32, resumably.

    Shard ``i`` covers rows ``[i*shard_size, (i+1)*shard_size)`` and is written atomically to
    ``work_dir/shard-{i:05d}.npy``; shards already there with the right shape are skipped. With an
    ``accelerate.Accelerator``, process ``r`` of ``W`` encodes shards ``i % W == r``; once all
    are done the main process returns the full matrix and the others None (they do not index).

    The matrix is returned memory-mapped, read-only: the shards are copied one by one into
    ``work_dir/vectors.npy`` (written atomically), so the corpus is never whole in memory. Only
    the main process writes it.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    n = len(passages)
    shards = range(0, (n + config.shard_size - 1) // config.shard_size)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    todo = []
    for i in shards:
        rows = min(config.shard_size, n - i * config.shard_size)
        if i % world == rank and not _shard_done(work_dir / f"shard-{i:05d}.npy", rows, encoder.dim):
            todo.append(i)
    if len(todo) < len(shards) // world:
        log.info("resuming: %d of %d shards left for this process", len(todo), len(shards))
    left = sum(min(config.shard_size, n - i * config.shard_size) for i in todo)
    bar = progress_bar(total=left, desc="encoding passages", unit="passage",
                       enabled=config.progress and bool(todo))
    for i in todo:
        part = passages[i * config.shard_size : (i + 1) * config.shard_size]
        vecs = encode_texts(encoder, part["text"], part["title"], config, bar=bar)
        _save_npy_atomic(work_dir / f"shard-{i:05d}.npy", vecs)
    bar.close()
    if accelerator is not None:
        accelerator.wait_for_everyone()
    files = [work_dir / f"shard-{i:05d}.npy" for i in shards]
    if accelerator is not None and not accelerator.is_main_process:
        return None
    out = work_dir / VECTORS
    with atomic_file(out) as tmp:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, encoder.dim))
        start = 0
        for f in files:
            shard = np.load(f, mmap_mode="r")
            matrix[start : start + len(shard)] = shard
            start += len(shard)
        matrix.flush()
        del matrix
    return np.load(out, mmap_mode="r")
