"""The one exception type for bad user input.

Library code raises :class:`UserError` with a message that names the file, row or value at fault;
scripts catch it (see :func:`retriever.cli.run`) and print that message on one line with exit status 2.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix (missing file, malformed row, bad argument)."""
