"""Progress bars for long work, and the one switch that silences them (``--quiet``)."""

from __future__ import annotations

from tqdm.auto import tqdm

_enabled = True


def set_progress(enabled: bool) -> None:
    """Turn every progress bar of this process on or off (the scripts' ``--quiet`` turns them off)."""
    global _enabled
    _enabled = enabled


def progress_bar(*args, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr, shown when ``enabled`` and not silenced by :func:`set_progress`."""
    return tqdm(*args, disable=not (enabled and _enabled), **kwargs)
