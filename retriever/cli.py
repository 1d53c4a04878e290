"""Helpers shared by the thin scripts in ``scripts/``: dataclass-generated parsers and error handling."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import UserError


def parse(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, **kwargs: Any) -> tuple:
    """Parse ``argv`` into one instance per dataclass, with ``--help`` generated from their fields.

    Bad arguments exit with status 2 (argparse's convention), as every other user error does.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(list(dataclass_types), **kwargs)
    return parser.parse_args_into_dataclasses(args=argv)


def run(main: Callable[[], Any]) -> None:
    """Run a script's ``main``: a :class:`UserError` becomes one ``error:`` line and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
