"""The ``ragqa`` command lines of the docs (bash blocks of README.md and docs/*.md, torchrun's own
options before them aside) name subcommands that exist and options those subcommands take, so
that docs/scale-out.md's multi-machine commands, which cannot run here, still match the code."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from rag.commands import COMMANDS
from rag.commands.cli import flags

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


class Captured(Exception):
    def __init__(self, classes):
        self.classes = classes


def options_of(name: str, monkeypatch, words: list[str]) -> set[str]:
    """The options subcommand ``name`` parses (``ragqa scale`` the options of its command
    ``words[0]``): its ``parse`` is stopped before it reads argv."""
    module = importlib.import_module(f"rag.commands.{COMMANDS[name]}")

    def capture(classes, *_, **__):
        raise Captured(classes)

    monkeypatch.setattr(module, "parse", capture)
    with pytest.raises(Captured) as got:
        module.main(words[:1]) if name == "scale" else module.main()
    return flags(got.value.classes)


def doc_commands() -> list[tuple[str, str, list[str]]]:
    """(doc, subcommand, its first word, options) of every ragqa command line in the docs' bash
    blocks."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split(" #")[0]
                match = re.search(r"(?:^|\s)ragqa\s+([a-z-]+)(.*)", line)
                if match:
                    rest = match.group(2)
                    out.append((doc.name, match.group(1), rest.split()[:1],
                                re.findall(r"(?<!\S)--[a-z_]+", rest)))
    return out


def test_docs_have_scale_out_commands():
    assert {"index", "finetune", "benchmark", "eval-retrieval"} <= {
        sub for doc, sub, _, _ in doc_commands() if doc == "scale-out.md"}


def test_every_doc_command_names_a_subcommand_and_its_options(monkeypatch):
    known: dict[tuple, set[str]] = {}
    for doc, sub, words, options in doc_commands():
        assert sub in COMMANDS, f"{doc}: ragqa {sub} is not a subcommand"
        key = (sub, *words) if sub == "scale" else (sub,)
        if key not in known:
            known[key] = options_of(sub, monkeypatch, words)
        unknown = [o for o in options if o not in known[key]]
        assert not unknown, f"{doc}: ragqa {sub} does not take {unknown}"
