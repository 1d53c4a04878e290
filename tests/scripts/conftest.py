"""Running ``ragqa COMMAND`` and ``scripts/*.py`` as a user runs them, cheaply: the ``run_scripts``
fixture.

A fresh interpreter spends seconds importing torch, transformers, datasets and faiss, and a dozen of
them overran the suite's time budget. So one subprocess (``sys.executable``, cwd the project root,
offline environment) imports those once and then *forks* one child per run: each run is still its
own process, with the ``ragqa`` console script's entry point (``rag.commands.main``) called or the
script executed as ``__main__``, its own stdin, stdout, stderr and exit status, and an uncaught
exception printing a traceback exactly as the interpreter would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Reads {"preload": [...], "jobs": [...]} as JSON on stdin, imports the preloads, then runs the jobs
# in order, one forked child each; prints {name: exit status}.
FORK_RUNNER = r"""
import importlib, json, os, runpy, sys, traceback

def child(job):
    for fd, path, flags in ((0, job["stdin"], os.O_RDONLY),
                            (1, job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        os.dup2(os.open(path, flags, 0o644), fd)
    sys.stdin = open(0, closefd=False)  # the runner's stdin object has been read to its end
    sys.argv = [job["script"], *job["args"]]
    try:
        if job["script"] == "ragqa":  # what the console script runs
            from rag.commands import main
            main()
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(job["script"])))  # as python SCRIPT does
            runpy.run_path(job["script"], run_name="__main__")
        code = 0
    except SystemExit as exc:  # as the interpreter reports it
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    import atexit
    atexit._run_exitfuncs()  # what the interpreter does at exit (os._exit below skips it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

spec = json.load(sys.stdin)
for name in spec["preload"]:  # "module" or "module:attr,attr" (transformers imports attributes lazily)
    module, _, attrs = name.partition(":")
    module = importlib.import_module(module)
    for attr in filter(None, attrs.split(",")):
        getattr(module, attr)
status = {}
for job in spec["jobs"]:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(job)
    status[job["name"]] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(status))
"""


@dataclass(frozen=True)
class Run:
    """Outcome of one script run; its repr (an assertion message) shows the exit status and output."""

    returncode: int
    stdout: str
    stderr: str

    def __repr__(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout[-2000:]}\nstderr:\n{self.stderr[-4000:]}"

    def error_line(self) -> str:
        """The one ``error:`` line of a run refused for bad input: exit status 2, no traceback."""
        assert self.returncode == 2, self
        assert "Traceback" not in self.stderr, self
        errors = [line for line in self.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, self
        return errors[0]


def run_forked(jobs: dict[str, list], work: Path, *, preload: Sequence[str],
               env: dict[str, str] | None = None, stdin: dict[str, str | bytes] | None = None
               ) -> dict[str, Run]:
    """Run ``{name: [script, *args]}`` in order; return each run's outcome. ``script`` is
    ``"ragqa"`` (``args`` then start with the subcommand) or a file name in ``scripts/``.

    ``preload`` names what the runner imports before forking (``"module"`` or
    ``"module:attr,attr"``), ``env`` adds environment variables, ``stdin`` maps a run's name to the
    text on its stdin (default: empty). Outputs are kept in ``work`` as ``<name>.out``/``<name>.err``.
    """
    work.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    specs = []
    for name, (script, *args) in jobs.items():
        stdin_path = os.devnull
        if stdin and name in stdin:
            stdin_path = work / f"{name}.in"
            data = stdin[name]  # text, or bytes (to send what is not UTF-8)
            stdin_path.write_bytes(data if isinstance(data, bytes) else data.encode())
        specs.append({"name": name, "script": script if script == "ragqa" else str(ROOT / "scripts" / script),
                      "args": [str(a) for a in args], "stdin": str(stdin_path),
                      "out": str(work / f"{name}.out"), "err": str(work / f"{name}.err")})
    proc = subprocess.run([sys.executable, "-c", FORK_RUNNER],
                          input=json.dumps({"preload": list(preload), "jobs": specs}), cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    status = json.loads(proc.stdout.splitlines()[-1])
    return {name: Run(status[name], (work / f"{name}.out").read_text(),
                      (work / f"{name}.err").read_text()) for name in jobs}


@pytest.fixture(scope="session")
def run_scripts():
    """:func:`run_forked`, for the modules here (which cannot import this one by name)."""
    return run_forked
