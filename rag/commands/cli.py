"""Helpers shared by the ``ragqa`` subcommands (``rag/commands``): dataclass-generated parsers,
error handling, and the verbosity every subcommand shares.

Verbosity: ``--quiet`` shows errors only and no progress bars; ``--verbose`` adds debugging
detail; by default warnings, progress bars and what a long run is doing (INFO) are shown, except
for commands quiet by default (``ask``: its output is the answer), which show warnings only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rag.common.errors import UserError


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the script docstring's layout (examples) and show defaults (not for switches that
    turn something off or set the verbosity: their default says nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        flag = action.option_strings[0] if action.option_strings else ""
        if flag.startswith("--no_") or flag in ("--quiet", "--verbose"):
            return action.help
        return super()._get_help_string(action)


def field_comments(cls: type) -> dict[str, str]:
    """The inline ``# comment`` after each field of a dataclass: our configs document fields there."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    last = None  # the field whose comment a following comment-only line continues
    for line in source.splitlines():
        if (m := re.match(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$", line)):
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and (m := re.match(r"^\s+#\s*(.+)$", line)):
            out[last] += " " + m.group(1).strip()
        else:
            last = None
    return out


def set_verbosity(quiet: bool = False, verbose: bool = False, quiet_by_default: bool = False) -> None:
    """Log levels and progress bars as the module doc describes."""
    from rag.common.progress import set_progress

    if int(os.environ.get("RANK", "0")) != 0:  # one of several processes: the first one talks
        quiet = True
    level = (logging.ERROR if quiet else logging.DEBUG if verbose
             else logging.WARNING if quiet_by_default else logging.INFO)
    logging.getLogger().setLevel(max(level, logging.INFO))  # other libraries: never their DEBUG
    for ours in ("retriever", "rag", "generator"):
        logging.getLogger(ours).setLevel(level)
    set_progress(not quiet)


def parse(dataclass_types: Sequence[type], argv: Sequence[str] | None = None,
          description: str | None = None, positionals: str | None = None,
          quiet_by_default: bool = False) -> tuple:
    """Parse ``argv`` into one instance per dataclass; ``--help`` text comes from field comments.

    With ``positionals`` (a name for the usage line), bare arguments are allowed anywhere and
    returned as a final list of strings. Every command also gets ``--quiet`` and ``--verbose``
    (:func:`set_verbosity`). Bad arguments exit with status 2 (argparse's convention), as every
    other user error does.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(list(dataclass_types), description=description)
    parser.formatter_class = _HelpFormatter

    def error(message: str) -> None:  # argparse's, with the line starting "error:" as ours do
        parser.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true",
                      help="print errors only: no progress bars, no notes on what is being done")
    talk.add_argument("--verbose", action="store_true",
                      help="also print debugging detail")
    comments: dict[str, str] = {}
    for cls in dataclass_types:
        comments.update(field_comments(cls))
    for action in parser._actions:
        if action.option_strings and action.option_strings[0].startswith("--no_"):
            positive = comments.get(action.dest, "").replace("%", "%%")
            action.help = f"turn --{action.dest} off" + (f" (it means: {positive})" if positive else "")
        elif not action.help and action.dest in comments:
            action.help = comments[action.dest].replace("%", "%%")
    if positionals:
        parser.usage = f"%(prog)s [{positionals} ...] [options]"
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    extra = parsed.pop() if parsed and isinstance(parsed[-1], argparse.Namespace) else None
    set_verbosity(getattr(extra, "quiet", False), getattr(extra, "verbose", False),
                  quiet_by_default)
    bare = [u for u in unknown if not u.startswith("-")] if positionals else []
    rest = [u for u in unknown if u not in bare]
    if rest:  # HfArgumentParser raises ValueError (a traceback): argparse's error instead
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return (*parsed, bare) if positionals else tuple(parsed)


def run(main: Callable[[], Any]) -> None:
    """Run a script's ``main``: a :class:`UserError` becomes one ``error:`` line and exit status 2.

    So do the environment's errors no check named first: a file that cannot be read or written
    (OSError, with its path), bytes that are not UTF-8, JSON that does not parse. Anything else is
    a bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main()
    except UserError as err:
        _fail(str(err))
    except UnicodeDecodeError as err:
        _fail(f"input is not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r})")
    except json.JSONDecodeError as err:
        _fail(f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})")
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _fail(f"{where}{err.strerror or err}")
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if "torch.distributed" in sys.modules:  # one process of a job: let the others say it too
        from rag.common.collective import settle

        settle()
    sys.exit(2)
