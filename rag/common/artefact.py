"""What a directory we write is, and where a command may write: nothing the user owns is replaced.

**Identity.** Every directory ragqa writes (an index, a sharded index, a RAG model, an encoder, an
export) holds :data:`MARKER`, ``ragqa.json``: our format name, the kind of artefact and the
format version. ``--overwrite`` replaces a directory only when its marker names the kind about
to be written (:func:`check_output_dir`). A directory with our file names but no marker is not
ours: a web app's ``manifest.json`` says nothing about who wrote it.

**Places.** :func:`check_paths` refuses, before any work, an output that resolves (symlinks
followed, ``..`` collapsed) to an input file or directory, into an input directory, or onto a
directory holding an input, and two outputs of one command at the same place.

**Confinement.** :func:`inside` is the one rule for the files a directory names (passage shards,
the sparse side, shards, weights): resolved, they stay inside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from .errors import UserError

MARKER = "ragqa.json"
FORMAT = "ragqa"
VERSION = 1
Kind = Literal["index", "sharded-index", "rag-model", "encoder", "export"]
_NAMES = {"index": "index", "sharded-index": "sharded index", "rag-model": "RAG model",
          "encoder": "encoder", "export": "transformers export"}


def write_marker(directory: str | os.PathLike, kind: Kind) -> None:
    """Mark ``directory`` (one being written, before its atomic rename) as our ``kind``."""
    if kind not in _NAMES:
        raise ValueError(f"unknown artefact kind {kind!r}")
    (Path(directory) / MARKER).write_text(json.dumps(
        {"format": FORMAT, "kind": kind, "version": VERSION}, indent=2) + "\n")


def read_kind(directory: str | os.PathLike) -> str | None:
    """The kind ``directory``'s marker names, or None when it has no valid marker of ours."""
    path = Path(directory) / MARKER
    try:
        if path.is_symlink() or not path.is_file():
            return None
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        return None
    kind = marker.get("kind")
    return kind if kind in _NAMES else None


def check_output_dir(path: str | os.PathLike, overwrite: bool, kind: Kind) -> None:
    """Refuse, before any work, an output directory that cannot be written or must not be replaced.

    An existing non-empty directory is replaced only when its marker says it is our ``kind`` and
    ``overwrite`` is set. A file in its place, a directory of ours of another kind, anything
    without our marker, or a place that cannot be written is refused: :class:`UserError` naming
    the path.
    """
    out = Path(path)
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory")
        if any(out.iterdir()):
            found = read_kind(out)
            if found is None:
                raise UserError(f"{out}: exists and is not a ragqa {_NAMES[kind]} (it has no "
                                f"{MARKER} of ours); refusing to replace it")
            if found != kind:
                raise UserError(f"{out}: holds a ragqa {_NAMES[found]}, not a {_NAMES[kind]}; "
                                "refusing to replace it")
            if not overwrite:
                raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{out}: cannot write in {parent}")


def check_paths(inputs: Mapping[str, str | os.PathLike | None],
                outputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse outputs that would land on inputs, or on each other (module doc).

    Args:
        inputs: flag -> path read (model names that are not paths are skipped).
        outputs: flag -> path written (a file, or a directory replaced as a whole).

    Raises :class:`UserError` naming both flags and the path.
    """
    outs = {flag: Path(p).resolve() for flag, p in outputs.items() if p}
    seen: dict[Path, str] = {}
    for flag, path in outs.items():
        if path in seen:
            raise UserError(f"{seen[path]} and {flag} are the same place {outputs[flag]}: each "
                            "output needs its own")
        seen[path] = flag
    ins = {flag: Path(p).resolve() for flag, p in inputs.items()
           if p and (os.path.lexists(p) or Path(p).resolve().exists())}
    for oflag, out in outs.items():
        for iflag, src in ins.items():
            if out == src:
                why = "is"
            elif src.is_dir() and out.is_relative_to(src):
                why = "is inside"
            elif src.is_relative_to(out):
                why = "holds"
            else:
                continue
            raise UserError(f"{oflag} {outputs[oflag]} {why} {iflag} {inputs[iflag]}: an output "
                            "never replaces or writes into an input")


def inside(root: str | os.PathLike, name: str | os.PathLike, owner: str | os.PathLike) -> Path:
    """``root / name``, refused unless it resolves (symlinks followed) inside ``root``;
    ``owner`` is the file that names it, for the error."""
    root = Path(root)
    path = root / str(name)
    if Path(str(name)).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{owner}: {name!s} points outside {root}; refusing to read it")
    return path
