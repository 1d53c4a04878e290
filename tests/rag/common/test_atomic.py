"""Atomic directory and file writes: all or nothing, no temporaries left behind, ordinary permissions."""

from __future__ import annotations

import stat

import pytest

from rag.common.atomic import atomic_directory, atomic_file


class Boom(Exception):
    pass


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_directory_replaces_an_existing_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with atomic_directory(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        assert list(tmp.iterdir()) == []
        (tmp / "new.txt").write_text("new")
        assert (out / "stale.txt").read_text() == "old"  # untouched until the block ends
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old directory left


def test_directory_creates_missing_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with atomic_directory(out) as tmp:
        (tmp / "x").write_text("x")
    assert (out / "x").read_text() == "x"


def test_exception_keeps_the_old_directory_and_removes_the_temporary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(Boom), atomic_directory(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise Boom
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_exception_without_an_old_directory_leaves_nothing(tmp_path):
    with pytest.raises(Boom), atomic_directory(tmp_path / "out"):
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_directory_permissions_are_0755(tmp_path):
    with atomic_directory(tmp_path / "out") as tmp:
        assert mode(tmp) == 0o755  # mkdtemp alone makes 0700
    assert mode(tmp_path / "out") == 0o755


def test_file_replaces_an_existing_one_and_keeps_the_suffix(tmp_path):
    out = tmp_path / "vectors.npy"
    out.write_text("old")
    with atomic_file(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".vectors.npy.tmp-")
        tmp.write_text("new")
        assert out.read_text() == "old"
    assert out.read_text() == "new"
    assert mode(out) == 0o644  # mkstemp alone makes 0600
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]


def test_file_exception_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    out = tmp_path / "report.json"
    out.write_text("old")
    with pytest.raises(Boom), atomic_file(out) as tmp:
        tmp.write_text("half")
        raise Boom
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphans = [tmp_path / f".out.tmp-{dead}-abc", tmp_path / f".out.old-{dead}"]
    live = tmp_path / f".out.tmp-{os.getpid()}-xyz"  # a run still going (this process)
    other = tmp_path / f".out.index.tmp-{dead}-q"  # another target's
    for d in [*orphans, live, other]:
        d.mkdir()
        (d / "part").write_text("half")
    (tmp_path / f".f.json.tmp-{dead}-1.json").write_text("half")
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    with atomic_file(tmp_path / "f.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", "f.json", live.name, other.name])
