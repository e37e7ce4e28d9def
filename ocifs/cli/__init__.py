"""The ``ocifs`` command line: argument parsing and output only.

Every :class:`~ocifs.errors.OcifsError` ends as one line on stderr and exit 1;
usage errors exit 2 (argparse's convention). Each command lives in its own module
with a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ocifs import __version__
from ocifs.cli import cache, convert, describe, index, inspect, login, mount, mounts
from ocifs.cli._common import describe_error, first_error
from ocifs.errors import OcifsError

__all__ = ["main"]

log = logging.getLogger("ocifs")

COMMAND_MODULES = (mount, cache, describe, inspect, index, convert, login, mounts)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocifs", description="Mount container images lazily, without pulling them."
    )
    parser.add_argument("--version", action="version", version=f"ocifs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocifs`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        print(f"ocifs: {describe_error(exc)}", file=sys.stderr)
        if not isinstance(first_error(exc), OcifsError):
            log.debug("traceback", exc_info=exc)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
