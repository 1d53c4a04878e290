"""The installable product: a wheel built from this checkout, installed (not editable, --no-deps)
into a fresh virtual environment that sees this environment's packages, answers with the starter
from another directory, offline, with nothing but the answer and its passages on the output."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_wheel_installs_and_answers_from_elsewhere(tmp_path):
    wheels = tmp_path / "wheels"
    built = run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation",
                 "-q", "-w", wheels], cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("ragqa-*.whl")
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path).stdout.strip())
    # this environment's packages, after the venv's own (a plain path: its .pth files, such as
    # this checkout's editable install, are not run, so `rag` can only come from the wheel)
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
                     wheel], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", RAGQA_CACHE=str(tmp_path / "cache"),
               PYTHONWARNINGS="error::FutureWarning", TOKENIZERS_PARALLELISM="false")
    where = run([python, "-c", "import rag.default as d; print(d.MODEL)"], cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout  # the wheel's starter
    asked = run([venv / "bin" / "ragqa", "ask", "Who designed the Eiffel Tower?"], cwd=elsewhere,
                env=env)
    assert asked.returncode == 0, asked.stderr
    lines = asked.stdout.splitlines()
    assert lines[0] == "Gustave Eiffel" and lines[1].startswith("  [1] Eiffel Tower"), asked.stdout
    assert asked.stderr == "", asked.stderr
    assert list((tmp_path / "cache").glob("default-index-*/manifest.json"))  # built, cached
