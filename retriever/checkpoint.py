"""Training checkpoints that resume exactly: model, optimizer, scheduler, random state, progress.

A run writing ``out`` keeps its checkpoint in ``<out>.checkpoint/`` (written atomically, so a kill
leaves the previous one whole)::

    model/          the model, in its own directory format (written by the trainer's ``save``)
    optimizer.pt    optimizer state (torch.save of tensors, loaded with weights_only=True)
    scheduler.pt    learning-rate scheduler state
    rng.pt          torch's random state (dropout) and CUDA's, when present
    state.json      progress: step, epoch, batch within the epoch, log; anything JSON the trainer adds

A resumed run restores all of it, so it draws the same dropout masks and sees the same batches as
an uninterrupted run: on CPU in fp32 the two end bit for bit equal (tests/scripts/test_kill.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from rag.common.atomic import atomic_directory


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where the checkpoint of a run writing ``out`` lives: ``<out>.checkpoint``."""
    return Path(f"{Path(out)}.checkpoint")


def save_checkpoint(ckpt: Path, save_model: Callable[[Path], None], opt, sched, state: dict,
                    extra: dict[str, str] | None = None) -> None:
    """Write the checkpoint (module doc); ``save_model(dir)`` writes the model into ``dir``,
    ``extra`` maps more file names to their text."""
    with atomic_directory(ckpt) as tmp:
        save_model(tmp / "model")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        torch.save(rng, tmp / "rng.pt")
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))


def resume_dir(out: str | os.PathLike) -> Path | None:
    """The checkpoint's model directory when a run writing ``out`` left one, else None."""
    path = checkpoint_dir(out)
    return path / "model" if (path / "state.json").is_file() else None


def load_checkpoint(ckpt: Path, opt, sched) -> dict | None:
    """Load optimizer and scheduler state from ``ckpt`` and return its progress, or None."""
    if not (ckpt / "state.json").is_file():
        return None
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    return json.loads((ckpt / "state.json").read_text())


def restore_rng(ckpt: Path) -> None:
    """Set the random state saved in ``ckpt``, if any: call it after everything that draws at
    start-up (model building), right before the training loop."""
    if not (ckpt / "rng.pt").is_file():
        return
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))
