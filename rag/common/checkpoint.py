"""Training checkpoints that resume exactly: model, optimizer, scheduler, random state, progress.

A run writing ``out`` keeps its checkpoint in ``<out>.checkpoint/`` (written atomically, so a kill
leaves the previous one whole)::

    model/          the model, in its own directory format (written by the trainer's ``save``)
    optimizer.pt    optimizer state (torch.save of tensors, loaded with weights_only=True)
    scheduler.pt    learning-rate scheduler state
    rng.pt          every process's random state (dropout): torch's (W, S) and, on GPUs, each
                    process's own CUDA generator's (W, C), row r for rank r
    state.json      progress: step, epoch, batch within the epoch, log; anything JSON the trainer adds

A resumed run restores all of it, so it draws the same dropout masks and sees the same batches as
an uninterrupted run: on CPU in fp32 the two end bit for bit equal (tests/scripts/test_kill.py).
Everything is loaded onto the CPU first (``map_location``), so a checkpoint written on GPUs
resumes on a CPU machine, and each process's optimizer state goes to its own parameters' device
(``Optimizer.load_state_dict`` moves it), not to the GPU that saved it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import torch

from rag.common.atomic import atomic_directory
from rag.common.collective import all_gather, world
from rag.common.errors import UserError, loading

log = logging.getLogger(__name__)


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where the checkpoint of a run writing ``out`` lives: ``<out>.checkpoint``."""
    return Path(f"{Path(out)}.checkpoint")


def rng_states() -> dict[str, torch.Tensor]:
    """Every process's random state, in rank order: ``{"torch": (W, S) uint8}``, plus ``"cuda"``
    (W, C), each process's current CUDA generator, on GPUs. Collective (``rag.common.collective``):
    every process calls it at the same step; a single process gets W = 1."""
    out = {"torch": torch.from_numpy(np.concatenate(all_gather(torch.get_rng_state().numpy()[None])))}
    if torch.cuda.is_available():
        mine = torch.cuda.get_rng_state().numpy()[None]
        out["cuda"] = torch.from_numpy(np.concatenate(all_gather(mine)))
    return out


def save_checkpoint(ckpt: Path, save_model: Callable[[Path], None], opt, sched, state: dict,
                    extra: dict[str, str] | None = None, rng: dict | None = None) -> None:
    """Write the checkpoint (module doc); ``save_model(dir)`` writes the model into ``dir``,
    ``extra`` maps more file names to their text, ``rng`` is :func:`rng_states` (gathered by
    every process before the main one saves; this process's own when None)."""
    with atomic_directory(ckpt) as tmp:
        save_model(tmp / "model")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        torch.save(rng if rng is not None else rng_states(), tmp / "rng.pt")
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))


def resume_dir(out: str | os.PathLike) -> Path | None:
    """The checkpoint's model directory when a run writing ``out`` left one, else None."""
    path = checkpoint_dir(out)
    return path / "model" if (path / "state.json").is_file() else None


def training_settings(*configs, exclude: Sequence[str] = (), **extra) -> dict:
    """What shapes a run's weights, as ``{flag name: value}``: the fields of ``configs``
    (dataclasses; those they hold flattened into their own fields), less ``exclude``, plus
    ``extra`` (e.g. a digest of the training data); JSON values, as a checkpoint holds them."""
    flat: dict = {}

    def walk(obj) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value)
            elif f.name not in exclude:
                flat[f.name] = value

    for config in configs:
        walk(config)
    return json.loads(json.dumps({**flat, **extra}))


def data_digest(rows: Sequence) -> str:
    """A short digest of training data (JSON-serialisable rows), to tell two data sets apart."""
    return hashlib.sha256(json.dumps(list(rows)).encode()).hexdigest()[:16]


def load_checkpoint(ckpt: Path, opt, sched, settings: dict | None = None) -> dict | None:
    """Load optimizer and scheduler state from ``ckpt`` and return its progress, or None.

    ``settings`` (:func:`training_settings`) must equal those the checkpoint was written with
    (``state["settings"]``, when it has them): a resume with other settings would train a model
    that neither run asked for. A difference raises :class:`UserError` naming each setting."""
    if not (ckpt / "state.json").is_file():
        return None
    saved = json.loads((ckpt / "state.json").read_text()).get("settings")
    if settings is not None and saved is not None:
        differ = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
        if differ:
            said = "; ".join(f"--{k} {saved.get(k)!r} then, {settings.get(k)!r} now" for k in differ)
            raise UserError(f"{ckpt}: a run with other settings wrote this checkpoint ({said}): "
                            f"rerun with the same arguments to resume, or remove {ckpt} to start "
                            "over")
    opt.load_state_dict(_load(ckpt / "optimizer.pt"))
    sched.load_state_dict(_load(ckpt / "scheduler.pt"))
    return from_old_schema(json.loads((ckpt / "state.json").read_text()))


def from_old_schema(state: dict | None) -> dict | None:
    """A progress ``state`` in the one schema (``rag.common.loop.new_progress``), from a checkpoint
    that an older version wrote: ``train-retriever``'s had ``logs`` and no update count (its
    count restarts at 0: it only paces the checkpoints), ``finetune``'s no ``loss_sum``."""
    if state is None:
        return None
    if "logs" in state:
        state["log"] = state.pop("logs")
    state.setdefault("step", 0)
    state.setdefault("loss_sum", 0.0)
    return state


def _load(path: Path):
    """A checkpoint file's tensors, on the CPU whatever device saved them (weights only)."""
    with loading(path):  # a planted pickle is refused by weights_only: one line naming it
        return torch.load(path, weights_only=True, map_location="cpu")


def restore_rng(ckpt: Path) -> None:
    """Set the random state saved in ``ckpt``, if any: call it after everything that draws at
    start-up (model building), right before the training loop."""
    if not (ckpt / "rng.pt").is_file():
        return
    rng = _load(ckpt / "rng.pt")
    rank, size = world()
    states = rng["torch"] if rng["torch"].dim() == 2 else rng["torch"][None]  # (W, S); old: (S,)
    if len(states) != size:
        log.warning("%s was saved by %d process(es), resumed by %d: rank r takes the random "
                    "state of rank r mod %d", ckpt, len(states), size, len(states))
    # clone: set_rng_state reads a view of a larger tensor from its storage's start (a crash)
    torch.set_rng_state(states[rank % len(states)].clone())
    if "cuda" in rng and torch.cuda.is_available():
        if rng["torch"].dim() == 2:  # one row per process: this process's own generator
            torch.cuda.set_rng_state(rng["cuda"][rank % len(rng["cuda"])].clone())
        else:  # older checkpoints: every device of the one saving process
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
