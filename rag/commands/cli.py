"""Helpers shared by the ``ragqa`` subcommands (``rag/commands``): dataclass-generated parsers,
error handling, and the verbosity every subcommand shares.

Verbosity: ``--quiet`` shows warnings (what was done to the input, e.g. a question truncated) and
errors only, no progress bars; ``--verbose`` adds debugging
detail; by default warnings, progress bars and what a long run is doing (INFO) are shown, except
for commands quiet by default (``ask``: its output is the answer), which show warnings only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, get_type_hints

from rag.common.errors import UserError
from rag.common.options import option


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the script docstring's layout (examples) and show defaults (not for switches that
    turn something off or set the verbosity, nor for required options or a default of None:
    those defaults say nothing, and the help says what leaving the option out means), and the
    values a number option takes (its field's ``within``, kept on the action by :func:`parse`)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        flag = action.option_strings[0] if action.option_strings else ""
        quiet = (flag.startswith("--no_") or flag in ("--quiet", "--verbose") or action.required
                 or action.default is None)
        text = action.help if quiet else super()._get_help_string(action)
        within = getattr(action, "within", None)
        if not within:
            return text
        if text.endswith("(default: %(default)s)"):
            return f"{text[:-1]}; {within})"
        return f"{text} ({within})"


def set_verbosity(quiet: bool = False, verbose: bool = False, quiet_by_default: bool = False) -> None:
    """Log levels and progress bars as the module doc describes."""
    from rag.common.progress import set_progress

    other_rank = int(os.environ.get("RANK", "0")) != 0  # several processes: the first one talks
    level = (logging.ERROR if other_rank else logging.WARNING if quiet
             else logging.DEBUG if verbose else logging.WARNING if quiet_by_default
             else logging.INFO)
    quiet = quiet or other_rank
    logging.getLogger().setLevel(max(level, logging.INFO))  # other libraries: never their DEBUG
    for ours in ("retriever", "rag", "generator"):
        logging.getLogger(ours).setLevel(level)
    set_progress(not quiet)


def parse(dataclass_types: Sequence[type], argv: Sequence[str] | None = None,
          description: str | None = None, positionals: str | None = None,
          quiet_by_default: bool = False) -> tuple:
    """Parse ``argv`` into one instance per dataclass; ``--help`` text comes from the fields'
    ``metadata["help"]`` (``rag.common.options.option``), and list options take their values
    space- or comma-separated (``--ks 1 5 20`` or ``--ks 1,5,20``).

    A field that holds a config of its own (``RagConfig.decode``, a ``DecodeConfig``) gives that
    config's fields as options, with the outer field's default for their defaults
    (:func:`_flatten`); a field whose metadata has ``cli=False`` is not an option.

    With ``positionals`` (a name for the usage line), bare arguments are allowed anywhere and
    returned as a final list of strings. Every command also gets ``--quiet`` and ``--verbose``
    (:func:`set_verbosity`). Bad arguments exit with status 2 (argparse's convention), as every
    other user error does.
    """
    from transformers import HfArgumentParser

    flat = [_flatten(cls) for cls in dataclass_types]
    ranges = {name: within for *_, own in flat for name, within in own.items()}
    parser = HfArgumentParser([cls for cls, *_ in flat], description=description)
    parser.formatter_class = _HelpFormatter

    def error(message: str) -> None:  # argparse's, with the line starting "error:" as ours do
        parser.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true",
                      help="print warnings and errors only: no progress bars, no notes on what is being done")
    talk.add_argument("--verbose", action="store_true",
                      help="also print debugging detail")
    lists = set()
    for action in parser._actions:
        if action.dest in ("help", "quiet", "verbose"):
            continue
        if action.help:
            action.help = action.help.replace("%", "%%")  # argparse formats help with %
        if action.option_strings and action.option_strings[0].startswith("--no_"):
            action.help = f"turn --{action.dest} off" + (f" (it means: {action.help})"
                                                         if action.help else "")
        if action.nargs == "+":
            lists.update(action.option_strings)
        if action.dest in ranges:
            action.within = ranges[action.dest]
    if positionals:
        parser.usage = f"%(prog)s [{positionals} ...] [options]"
    argv = _split_lists(list(sys.argv[1:] if argv is None else argv), lists)
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    extra = parsed.pop() if parsed and isinstance(parsed[-1], argparse.Namespace) else None
    parsed = [build(values) for (_, build, _), values in zip(flat, parsed, strict=True)]
    set_verbosity(getattr(extra, "quiet", False), getattr(extra, "verbose", False),
                  quiet_by_default)
    bare = [u for u in unknown if not u.startswith("-")] if positionals else []
    rest = [u for u in unknown if u not in bare]
    if rest:  # HfArgumentParser raises ValueError (a traceback): argparse's error instead
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return (*parsed, bare) if positionals else tuple(parsed)


def _flatten(cls: type) -> tuple[type, Callable[[Any], Any], dict[str, Any]]:
    """``cls`` as the parser sees it, the function that turns what the parser fills into a
    ``cls``, and ``{option: Range}`` for the options declared ``within`` one. A field holding a
    config (a dataclass) is replaced by that config's fields, whose defaults are those of the
    outer field's default (``RagConfig``'s ``decode`` searches 4 beams, a bare ``DecodeConfig``
    1); fields with ``cli=False`` in their metadata are left out and keep their defaults. The
    flat class has no checks: ``cls``, built from it, makes them."""
    hints = get_type_hints(cls)
    options = _options(cls)
    nested = {f.name for f in options if dataclasses.is_dataclass(hints[f.name])}
    fields, plain, inner = [], [], {}  # (field, type, default) flat; cls's own; {nested: (default, names)}
    for f in options:
        if f.name not in nested:
            fields.append((f, hints[f.name], _default(f)))
            plain.append(f.name)
            continue
        default = _default(f)
        inner_hints, inner_options = get_type_hints(type(default)), _options(default)
        inner[f.name] = default, [g.name for g in inner_options]
        fields += [(g, inner_hints[g.name], getattr(default, g.name)) for g in inner_options]
    spec = [_flat_field(*field) for field in fields]
    ranges = {f.name: f.metadata["within"] for f, *_ in fields if "within" in f.metadata}
    names = [name for name, *_ in spec]
    if len(set(names)) < len(names):  # a programming error, not the user's
        raise TypeError(f"{cls.__name__}: nested configs repeat an option name: {names}")
    flat_cls = dataclasses.make_dataclass(cls.__name__, spec, kw_only=True)

    def build(values: Any) -> Any:
        kwargs = {name: getattr(values, name) for name in plain}
        for name, (default, own) in inner.items():
            kwargs[name] = dataclasses.replace(default, **{n: getattr(values, n) for n in own})
        return cls(**kwargs)

    return flat_cls, build, ranges


def _options(config: Any) -> list[dataclasses.Field]:
    """The fields of a config (class or instance) that are command-line options: those set at
    construction and not marked ``cli=False``."""
    return [f for f in dataclasses.fields(config) if f.init and f.metadata.get("cli") is not False]


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's product), or MISSING."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _flat_field(f: dataclasses.Field, hint: Any, default: Any) -> tuple[str, Any, Any]:
    """``f`` as a field of the flat class: its resolved type, ``default`` and the metadata argparse
    takes (ours, ``cli`` and ``within``, left out)."""
    metadata = {key: value for key, value in f.metadata.items() if key not in ("cli", "within")}
    if default is dataclasses.MISSING:
        return f.name, hint, dataclasses.field(metadata=metadata)
    return f.name, hint, option(default, metadata.pop("help", None), **metadata)


def _split_lists(argv: list[str], flags: set[str]) -> list[str]:
    """``argv`` with the values of list options split at commas (``--ks 1,5`` = ``--ks 1 5``)."""
    out, in_list = [], False
    for arg in argv:
        if arg.startswith("-"):
            flag, eq, value = arg.partition("=")
            in_list = flag in flags
            if in_list and eq:
                out += [flag, *filter(None, value.split(","))]
                continue
            out.append(arg)
        elif in_list:
            out += list(filter(None, arg.split(",")))
        else:
            out.append(arg)
    return out


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
