"""Helpers shared by the ``ragqa`` subcommands (``rag/commands``): command lines built from config
dataclasses, error handling, and the verbosity every subcommand shares.

Command lines (:func:`parse`): each field of a config dataclass is an option (argparse, public
API only) named after it, with its ``metadata["help"]``, its default and the values it takes
(``Literal`` choices, a ``within`` range) in ``--help``. A flag left out is not filled in by the
parser: a config is built from the flags given over its own defaults, and :class:`Changes` are
exactly the flags given (``rag.common.options``).

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
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from rag.common.errors import UserError
from rag.common.options import Changes, Range, check_changes, held
from rag.common.progress import set_progress

Spec = type | Changes  # what parse takes: a config dataclass, or the changes of one


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one ``error:`` line after the usage, as ours are."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


@dataclasses.dataclass(frozen=True)
class _Option:
    """A config field as a command-line option: ``--name`` (and ``--na-me``, and its aliases)."""

    name: str
    kind: Any  # the field's type, or the wider one a run takes (Changes.types)
    default: Any  # dataclasses.MISSING: a required option
    help: str  # the field's, or the one Changes gives
    over: str = ""  # "default: ..." of a change; "": the field's default is shown
    within: Range | None = None
    aliases: tuple[str, ...] = ()

    @classmethod
    def of(cls, f: dataclasses.Field, kind: Any, default: Any, text: str | None = None,
           over: str = "") -> _Option:
        """The option of field ``f``, its help ``text`` or the field's own."""
        return cls(f.name, kind, default, f.metadata.get("help", "") if text is None else text,
                   over, f.metadata.get("within"), tuple(f.metadata.get("aliases", ())))

    @property
    def flags(self) -> list[str]:
        dashed = [f"--{self.name.replace('_', '-')}"] if "_" in self.name else []
        return [f"--{self.name}", *dashed, *self.aliases]

    @property
    def off_flags(self) -> list[str]:
        """``--no_NAME``, ``--no-NAME`` for a switch that is on by default; else none."""
        if _plain(self.kind) is not bool or self.default is not True or self.over:
            return []
        return [f"--no_{self.name}", f"--no-{self.name.replace('_', '-')}"]

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the option (and its :attr:`off_flags`); a flag left out leaves the parsed
        namespace without it."""
        kind, kwargs = _plain(self.kind), {}
        if typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            by_text = {str(c): c for c in choices}
            kwargs.update(choices=choices, type=lambda text: by_text.get(text, text))
        elif kind is bool:
            kwargs.update(type=_to_bool, nargs="?", const=True)
        elif typing.get_origin(kind) is list:
            kwargs.update(type=typing.get_args(kind)[0], nargs="+")
        else:
            kwargs.update(type=kind)
        parser.add_argument(*self.flags, dest=self.name, default=argparse.SUPPRESS,
                            required=self.default is dataclasses.MISSING,
                            help=_escape(self.shown()), **kwargs)
        if self.off_flags:
            off = f" (it means: {self.help})" if self.help else ""
            parser.add_argument(*self.off_flags, dest=self.name, action="store_false",
                                default=argparse.SUPPRESS, help=_escape(f"turn --{self.name} off{off}"))

    def shown(self) -> str:
        """The help as ``--help`` shows it: the text, what leaving the option out means (a
        change's ``default: ...``, or the default, unless required or None) and the range."""
        within = f"{self.within}" if self.within else ""
        if self.over:
            text = "; ".join(filter(None, [self.help, f"default: {self.over}"]))
        elif self.default is dataclasses.MISSING or self.default is None:
            text = self.help
        else:
            return " ".join(filter(None, [self.help, f"(default: {self.default}"
                                                     f"{'; ' if within else ''}{within})"]))
        return " ".join(filter(None, [text, f"({within})" if within else ""]))


def _plain(kind: Any) -> Any:
    """``X`` for ``X | None``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        parts = [part for part in typing.get_args(kind) if part is not type(None)]
        if len(parts) != 1:  # a programming error, not the user's
            raise TypeError(f"an option has one type (or that type or None), not {kind}")
        return parts[0]
    return kind


def _to_bool(text: str) -> bool:
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(
        f"Truthy value expected: got {text} but expected one of yes/no, true/false, t/f, y/n, 1/0 "
        "(case insensitive).")


def _escape(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help with %


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's product), or MISSING."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config class that are command-line options: those set at construction and
    not marked ``cli=False``."""
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli") is not False]


def _field_options(cls: type, defaults: Any = None, changes: Changes | None = None
                   ) -> list[_Option]:
    """The options of ``cls``'s fields, with the defaults of ``defaults`` (an instance) where given,
    as ``changes`` offers them where given. A field holding a config gives that config's options
    (the outer field's default their defaults: ``RagConfig``'s ``decode`` searches 4 beams, a bare
    ``DecodeConfig`` 1); a dict field holding the changes of one, the options of its Changes."""
    hints, holders, out = typing.get_type_hints(cls), held(cls), []
    for f in _fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if "changes" in f.metadata:
            out += _changes_options(f.metadata["changes"])
        elif f.name in holders:
            out += _field_options(holders[f.name], default, changes)
        elif changes is None:
            out.append(_Option.of(f, hints[f.name], default))
        elif changes.help is None or f.name in changes.help:
            text = None if changes.help is None else changes.help[f.name]
            out.append(_Option.of(f, changes.types.get(f.name, hints[f.name]), default, text,
                                  changes.over))
    return out


def _changes_options(changes: Changes) -> list[_Option]:
    """The options of ``changes``, in the order its ``help`` names them (or its config's)."""
    options = _field_options(changes.config, changes=changes)
    if changes.help is None:
        return options
    by_name = {o.name: o for o in options}
    return [by_name[name] for name in changes.help]


def _options(spec: Spec) -> tuple[list[_Option], Callable[[dict], Any]]:
    """The options of ``spec`` and the function that turns the flags given (``{name: value}``)
    into what :func:`parse` returns for it: a config, or a Changes' ``{field: value}``."""
    options = _changes_options(spec) if isinstance(spec, Changes) else _field_options(spec)
    names = [o.name for o in options]
    if len(set(names)) < len(names):  # a programming error, not the user's
        raise TypeError(f"{spec}: nested configs repeat an option name: {names}")
    if isinstance(spec, Changes):

        def changes(given: dict) -> dict:
            chosen = {o.name: given[o.name] for o in options if o.name in given}
            check_changes(spec.config, {k: v for k, v in chosen.items() if k not in spec.types})
            return chosen

        return options, changes
    fields = _fields(spec)
    holders = {name: cls for name, cls in held(spec).items() if name in {f.name for f in fields}}

    def build(given: dict) -> Any:
        kwargs = {f.name: given[f.name] for f in fields if f.name in given and f.name not in holders}
        for holder, inner in holders.items():
            changed = {g.name: given[g.name] for g in _fields(inner) if g.name in given}
            if changed:
                outer = _default(next(f for f in fields if f.name == holder))
                kwargs[holder] = ({**outer, **changed} if isinstance(outer, dict)
                                  else dataclasses.replace(outer, **changed))
        return spec(**kwargs)

    return options, build


def set_verbosity(quiet: bool = False, verbose: bool = False, quiet_by_default: bool = False) -> None:
    """Log levels and progress bars as the module doc describes."""
    other_rank = int(os.environ.get("RANK", "0")) != 0  # several processes: the first one talks
    level = (logging.ERROR if other_rank else logging.WARNING if quiet
             else logging.DEBUG if verbose else logging.WARNING if quiet_by_default
             else logging.INFO)
    quiet = quiet or other_rank
    logging.getLogger().setLevel(max(level, logging.INFO))  # other libraries: never their DEBUG
    for ours in ("retriever", "rag", "generator"):
        logging.getLogger(ours).setLevel(level)
    set_progress(not quiet)


def flags(specs: Sequence[Spec]) -> set[str]:
    """Every flag a command line of ``specs`` takes (``--help``, ``--quiet`` and ``--verbose``
    included)."""
    options = [o for spec in specs for o in _options(spec)[0]]
    return {flag for o in options for flag in (*o.flags, *o.off_flags)} | {"--help", "--quiet",
                                                                            "--verbose"}


def parse(specs: Sequence[Spec], argv: Sequence[str] | None = None,
          description: str | None = None, positionals: str | None = None,
          quiet_by_default: bool = False) -> tuple:
    """Parse ``argv`` into one value per spec: a config dataclass is built from the flags given
    (its ``__post_init__`` checks them), over its defaults; a :class:`Changes` gives
    ``{field: value}`` of the flags given, checked. ``--help`` text comes from the fields'
    ``metadata["help"]`` (``rag.common.options.option``), and list options take their values
    space- or comma-separated (``--ks 1 5 20`` or ``--ks 1,5,20``).

    A field that holds a config of its own (``RagConfig.decode``, a ``DecodeConfig``) gives that
    config's fields as options, with the outer field's default for their defaults; a field whose
    metadata has ``cli=False`` is not an option.

    With ``positionals`` (a name for the usage line), bare arguments are allowed anywhere and
    returned as a final list of strings. Every command also gets ``--quiet`` and ``--verbose``
    (:func:`set_verbosity`). Bad arguments exit with status 2 (argparse's convention), as every
    other user error does.
    """
    usage = f"%(prog)s [{positionals} ...] [options]" if positionals else None
    parser = _Parser(description=description, usage=usage,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    built, lists = [], set()
    for spec in specs:
        options, build = _options(spec)
        for option in options:
            option.add_to(parser)
            if typing.get_origin(_plain(option.kind)) is list:
                lists.update(option.flags)
        built.append(build)
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true",
                      help="print warnings and errors only: no progress bars, no notes on what is being done")
    talk.add_argument("--verbose", action="store_true",
                      help="also print debugging detail")
    argv = _split_lists(list(sys.argv[1:] if argv is None else argv), lists)
    namespace, unknown = parser.parse_known_args(argv)
    given = vars(namespace)
    parsed = [build(given) for build in built]
    set_verbosity(given["quiet"], given["verbose"], quiet_by_default)
    bare = [u for u in unknown if not u.startswith("-")] if positionals else []
    rest = [u for u in unknown if u not in bare]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return (*parsed, bare) if positionals else tuple(parsed)


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
    # lazy: transformers (half a second): `ragqa --help` and the parser's other users go without it
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
        from rag.common.collective import settle  # lazy: torch; only a job's process gets here

        settle()
    sys.exit(2)
