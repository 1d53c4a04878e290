"""The README's shell commands that need nothing but the embedded default run as written; and the
``ragqa`` command lists its subcommands, explains each, and refuses unknown ones in one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# lines that need more than the embedded default, or never end by design (a server)
NEEDS_MORE = re.compile(
    r"runs/|\.\./shared|--model|--index|--corpus|--train|psgs|nq-dev|\.\.\.|ragqa serve")


def readme_commands() -> list[str]:
    """Commands of the README's bash blocks (continuation lines joined) that start with ragqa or
    feed it, and name no file beyond the embedded default."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if "ragqa" in line.split("#")[0] and not line.startswith("#") and not NEEDS_MORE.search(line):
                commands.append(line)
    return commands


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment of a user's shell, offline, with one cache for the embedded index."""
    ragqa = shutil.which("ragqa")
    assert ragqa, "the ragqa console script is not installed (pip install -e .)"
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "RAGQA_CACHE": str(tmp_path_factory.mktemp("cache")),
            "PATH": f"{Path(ragqa).parent}:{os.environ['PATH']}"}


def test_readme_has_default_only_commands():
    commands = readme_commands()
    assert any(c.startswith("ragqa ask ") for c in commands), commands
    assert any("| ragqa ask" in c for c in commands), commands


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command, env):
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), command


def test_ragqa_lists_explains_and_refuses(env):
    from rag.commands import COMMANDS

    listing = subprocess.run(["ragqa", "--help"], env=env, capture_output=True, text=True)
    assert listing.returncode == 0 and all(f"  {name} " in listing.stdout for name in COMMANDS)
    bare = subprocess.run(["ragqa"], env=env, capture_output=True, text=True)
    assert bare.returncode == 2 and "usage: ragqa" in bare.stderr
    wrong = subprocess.run(["ragqa", "aks", "x"], env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: unknown command 'aks'")
    assert "Traceback" not in wrong.stderr
    for name in ("eval-retrieval", "export"):
        sub = subprocess.run(["ragqa", name, "--help"], env=env, capture_output=True, text=True)
        assert sub.returncode == 0 and f"usage: ragqa {name}" in sub.stdout, sub.stderr
        assert "--quiet" in sub.stdout and "--verbose" in sub.stdout
