"""What every ``ocifs`` command shares: source options, logging, error lines."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import humanfriendly

from ocifs.cache import default_cache_dir
from ocifs.errors import OcifsError
from ocifs.gzindex import IndexTrust
from ocifs.oci import Platform
from ocifs.sources import SourceOptions

__all__ = [
    "add_image_options",
    "describe_error",
    "first_error",
    "index_trust_of",
    "parse_size",
    "platform_of",
    "setup_logging",
    "source_options",
    "state_dir",
]


def state_dir() -> Path:
    """``$XDG_STATE_HOME/ocifs``, else ``~/.local/state/ocifs``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "ocifs"


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group, preferring an OcifsError."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [first_error(e) for e in exc.exceptions]
        for leaf in leaves:
            if isinstance(leaf, OcifsError):
                return leaf
        return leaves[0]
    return exc


def describe_error(exc: BaseException) -> str:
    """One line for the user: an OcifsError's message, else the exception's type and text."""
    exc = first_error(exc)
    if isinstance(exc, OcifsError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def setup_logging(verbose: int, log_file: Path | None = None) -> None:
    """Log to stderr (or ``log_file``): warnings, ``-v`` info, ``-vv`` debug."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs whole URLs at INFO, signed redirect queries included: ocifs logs each
    # request itself at -vv, without the query (registry_transport.safe_url).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def add_image_options(p: argparse.ArgumentParser, *, short_verbose: bool = True) -> None:
    """The options of every command that reads an image (``grep`` keeps ``-v`` for itself)."""
    verbose = ("-v", "--verbose") if short_verbose else ("--verbose",)
    p.add_argument(*verbose, action="count", default=0, help="more logging (-vv)")
    p.add_argument(
        "--insecure", action="store_true", help="use plain HTTP (no TLS) for the registry"
    )
    p.add_argument(
        "--tls-verify",
        type=_boolean,
        default=True,
        metavar="BOOL",
        help="verify HTTPS certificates (default true; false skips the check)",
    )
    p.add_argument("--cert-dir", metavar="DIR", help="CA certificates (*.crt) to trust")
    p.add_argument("--creds", metavar="USER:PASS", help="registry credentials")
    p.add_argument("--authfile", metavar="FILE", help="auth file (containers-auth.json)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to pick")
    p.add_argument("--cache-dir", default=str(default_cache_dir()), help="cache directory")
    p.add_argument(
        "--cache-max",
        metavar="SIZE",
        type=parse_size,
        help="cache size bound, e.g. 10G (default: 10 GiB or 10%% of the disk, if less)",
    )
    p.add_argument(
        "--index-trust",
        choices=[t.value for t in IndexTrust],
        default=IndexTrust.ALLOW.value,
        help="published gzip seek indexes: require, allow (default) or ignore them",
    )
    p.add_argument(
        "--timeout", type=_seconds, default=30.0, help="network timeout, seconds (default 30)"
    )


def _boolean(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    try:
        return value[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: true or false") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: seconds > 0 expected")
    return value


def parse_size(text: str) -> int:
    """A size in bytes from ``10G``, ``512MiB``, ``1.5 GB``; K/M/G/T are powers of 1024."""
    try:
        return int(humanfriendly.parse_size(text, binary=True))
    except humanfriendly.InvalidSize:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None


def source_options(args: argparse.Namespace) -> SourceOptions:
    """The :class:`SourceOptions` the parsed arguments ask for."""
    creds = None
    if args.creds is not None:
        user, sep, password = args.creds.partition(":")
        if not sep or not user:
            raise OcifsError("--creds must be USER:PASSWORD")
        creds = (user, password)
    if args.authfile is not None and not os.path.isfile(args.authfile):
        raise OcifsError(f"--authfile {args.authfile}: no such file")
    if args.cert_dir is not None and not os.path.isdir(args.cert_dir):
        raise OcifsError(f"--cert-dir {args.cert_dir}: no such directory")
    return SourceOptions(
        insecure=args.insecure,
        creds=creds,
        authfile=args.authfile,
        timeout_s=args.timeout,
        tls_verify=args.tls_verify,
        cert_dir=args.cert_dir,
    )


def index_trust_of(args: argparse.Namespace) -> IndexTrust:
    """The ``--index-trust`` policy asked for."""
    return IndexTrust(args.index_trust)


def platform_of(args: argparse.Namespace) -> Platform | None:
    """The ``--platform`` asked for, or None for the host's."""
    return Platform.parse(args.platform) if args.platform else None
