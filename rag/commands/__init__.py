"""The ``ragqa`` command: one subcommand per task, each a module of this package with a ``main()``.

``ragqa SUB [options]`` runs ``SUB``'s ``main`` under :func:`rag.commands.cli.run` (a user error is
one ``error:`` line and exit status 2). ``ragqa --help`` reads the subcommands' summaries from
their sources without importing them.
"""

from __future__ import annotations

import ast
import gc
import importlib
import sys
from importlib import metadata
from pathlib import Path

from rag.commands.cli import run

COMMANDS = {  # subcommand -> module of this package
    "ask": "ask",
    "index": "build_index",
    "eval-retrieval": "eval_retrieval",
    "train-retriever": "train_retriever",
    "finetune": "finetune",
    "benchmark": "benchmark",
    "compare": "compare",
    "scale": "scale",
    "export": "export_transformers",
    "serve": "serve",
}


def summary(name: str) -> str:
    """The first line of a subcommand's docstring, read without importing it (imports are slow)."""
    source = (Path(__file__).parent / f"{COMMANDS[name]}.py").read_text()
    return (ast.get_docstring(ast.parse(source)) or "").splitlines()[0]


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ragqa COMMAND [options]   (ragqa COMMAND --help explains every option)", "",
             "Retrieval-augmented open-domain question answering.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary(name)}" for name in COMMANDS]
    lines += ["", "Without --model, ask answers with the starter shipped in the package, offline."]
    return "\n".join(lines)


def run_command(name: str, args: list[str]) -> None:
    """Run subcommand ``name`` with ``args`` as a user would (``ragqa name args...``).

    The garbage collector is told to leave alone what exists once the command's modules are
    imported, and again once it is done (``gc.freeze``): the modules of torch, transformers and
    their dependencies are millions of objects that live until the process ends, and each full
    collection, the ones at exit included, would walk them all (a second of ``ragqa ask``'s five,
    docs/benchmarks.md). Nothing is left unfreed that would have been: what those objects hold
    is freed at exit as before."""
    sys.argv = [f"ragqa {name}", *args]

    def command() -> None:
        # imported inside run: a missing optional dependency is one error line too
        module = importlib.import_module(f"{__name__}.{COMMANDS[name]}")
        gc.freeze()
        module.main()

    run(command)
    gc.freeze()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ragqa`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"ragqa {metadata.version('ragqa')}")
        return
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r} (one of {', '.join(COMMANDS)}; ragqa --help)",
              file=sys.stderr)
        sys.exit(2)
    run_command(argv[0], argv[1:])
