"""Atomic writes: build a directory or file under a temporary name next to it, then rename it into place.

The temporary sits in the target's own directory (so on the same filesystem, where ``os.replace`` is
atomic): a reader, or a run killed half-way, sees the old version or the new one, never a partial one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rag.common.artefact import Kind, write_marker
from rag.common.errors import UserError

DIR_MODE = 0o755  # mkdtemp makes 0700; a saved model or index should read like any other directory
FILE_MODE = 0o644  # likewise mkstemp's 0600


@contextmanager
def atomic_directory(out_dir: str | os.PathLike, kind: Kind | None = None) -> Iterator[Path]:
    """Yield a fresh empty directory to fill; when the ``with`` block ends normally it becomes ``out_dir``.

    ``kind`` marks the directory as that artefact of ours (``rag.common.artefact``), which is what
    lets a later ``--overwrite`` replace it.

    The directory is ``.{name}.tmp-<pid>-XXXX`` next to ``out_dir`` (whose parents are created),
    mode 0755. On success its files are flushed to disk (fsync), an existing ``out_dir`` is moved
    aside (``.{name}.old-<pid>``), the new directory is renamed into place, the parent directory is
    flushed, and the old one deleted. On an exception the temporary directory is deleted,
    ``out_dir`` is left as it was, and the exception propagates. Temporaries left by a killed run
    (their process is gone) are removed first. Callers decide beforehand whether replacing an
    existing ``out_dir`` is allowed.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-{os.getpid()}-"))
    old = None
    try:
        tmp.chmod(DIR_MODE)
        yield tmp
        if kind is not None:
            write_marker(tmp, kind)
        _fsync_tree(tmp)
        if os.path.lexists(out_dir):
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)  # left by a run of ours that died here
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            if old is not None:
                os.replace(old, out_dir)
            raise
        _fsync(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; when the ``with`` block ends normally it replaces ``path``.

    The temporary is ``.{name}.tmp-XXXX{suffix}`` next to ``path`` (same suffix, for writers such as
    ``np.save`` that look at it), mode 0644; the parent directory must exist. On an exception it is
    deleted, ``path`` is left as it was, and the exception propagates.
    """
    path = Path(path)
    _remove_orphans(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-",
                                suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.chmod(FILE_MODE)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_with(owner, path: str | os.PathLike) -> None:
    """Delete the temporary directory ``path`` when ``owner`` is garbage-collected, or at exit."""
    weakref.finalize(owner, shutil.rmtree, str(path), True)


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (directories: where the OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before their directories
        if path.is_file() and not path.is_symlink():
            _fsync(path)
        elif path.is_dir():
            _fsync(path)
    _fsync(root)


def _remove_orphans(target: Path) -> None:
    """Delete ``.{name}.tmp-<pid>-*`` and ``.{name}.old-<pid>`` next to ``target`` whose process
    is gone (a run killed while writing ``target``)."""
    for sibling in target.parent.glob(f".{target.name}.*"):
        kind, _, rest = sibling.name[len(target.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_output_parent(path: str | os.PathLike) -> None:
    """Fail early (before hours of work) when an output file cannot be written: its directory does
    not exist or is not writable, or a directory stands where the file would go."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise UserError(f"{path}: directory {parent} does not exist")
    if Path(path).is_dir():
        raise UserError(f"{path}: is a directory, not a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: directory {parent} is not writable")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically; a missing parent directory is a :class:`UserError`."""
    path = Path(path)
    check_output_parent(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
