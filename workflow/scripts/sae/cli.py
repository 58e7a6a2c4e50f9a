"""What every entry script shares: logging to stderr, and one-line errors."""

from __future__ import annotations

import logging
import sys

from . import SaeError


def main(body, quiet: bool = False) -> None:
    """Run ``body()``; a SaeError becomes one line on stderr and exit status 1.

    quiet: log warnings only (MPI ranks other than 0).
    """
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        body()
    except SaeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
