"""The ``ocifs`` command line: argument parsing and output only.

Every :class:`~ocifs.errors.OcifsError` ends as one line on stderr and exit 1;
usage errors exit 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from ocifs import __version__
from ocifs.cache import default_cache_dir
from ocifs.errors import OcifsError
from ocifs.mount import MountOptions, check_mountpoint, run_mount, unmount
from ocifs.oci import Platform
from ocifs.sources import SourceOptions, check_reference, open_source

__all__ = ["main"]

log = logging.getLogger("ocifs")


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "ocifs"


def _first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group, preferring an OcifsError."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_first_error(e) for e in exc.exceptions]
        for leaf in leaves:
            if isinstance(leaf, OcifsError):
                return leaf
        return leaves[0]
    return exc


def _describe(exc: BaseException) -> str:
    exc = _first_error(exc)
    if isinstance(exc, OcifsError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def _setup_logging(verbose: int, log_file: Path | None = None) -> None:
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
    # httpx logs every request at INFO: keep that for -vv.
    logging.getLogger("httpx").setLevel(logging.INFO if verbose >= 2 else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _source_options(args: argparse.Namespace) -> SourceOptions:
    creds = None
    if args.creds is not None:
        user, sep, password = args.creds.partition(":")
        if not sep or not user:
            raise OcifsError("--creds must be USER:PASSWORD")
        creds = (user, password)
    return SourceOptions(
        insecure=args.insecure,
        creds=creds,
        authfile=args.authfile,
        timeout_s=args.timeout,
    )


def _cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.dir).absolute()
    platform = Platform.parse(args.platform) if args.platform else None
    source_opts = _source_options(args)
    # Parse the reference now: a malformed one fails before anything else happens.
    check_reference(args.ref)
    check_mountpoint(mountpoint)
    opts = MountOptions(mountpoint, Path(args.cache_dir), platform)

    def serve(ready: object) -> None:
        async def run() -> None:
            source = open_source(args.ref, source_opts)
            await run_mount(source, opts, ready)  # type: ignore[arg-type]

        trio.run(run)

    if args.foreground:
        _setup_logging(args.verbose)
        serve(lambda fsname: print(f"mounted {fsname} at {mountpoint}", file=sys.stderr))
        return 0
    return _daemonize(args, mountpoint, serve)


def _daemonize(args: argparse.Namespace, mountpoint: Path, serve: object) -> int:
    """Fork a daemon that mounts; return once it says the tree is ready (or why not).

    The credentials stay in memory across the fork: never on a command line.
    """
    log_file = Path(args.log_file) if args.log_file else _state_dir() / "mount.log"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode("utf-8", "replace").strip()
        if message.startswith("ok"):
            return 0
        os.waitpid(pid, 0)
        print(f"ocifs: {message or f'mount daemon failed; see {log_file}'}", file=sys.stderr)
        return 1
    # The daemon.
    os.close(read_fd)
    os.setsid()
    status = 1
    try:
        _setup_logging(max(args.verbose, 1), log_file)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)

        def ready(fsname: str) -> None:
            os.write(write_fd, f"ok {fsname}\n".encode())
            os.close(write_fd)

        serve(ready)  # type: ignore[operator]
        status = 0
    except BaseException as exc:  # the daemon must report every failure, then exit
        log.error("%s", _describe(exc))
        with contextlib.suppress(OSError):
            os.write(write_fd, (_describe(exc) + "\n").encode())
    finally:
        logging.shutdown()
        os._exit(status)


def _cmd_umount(args: argparse.Namespace) -> int:
    unmount(Path(args.dir).absolute(), lazy=args.lazy)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocifs", description="Mount container images lazily, without pulling them."
    )
    parser.add_argument("--version", action="version", version=f"ocifs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
        p.add_argument("--insecure", action="store_true", help="allow plain HTTP / no TLS check")
        p.add_argument("--creds", metavar="USER:PASS", help="registry credentials")
        p.add_argument("--authfile", metavar="FILE", help="auth file (containers-auth.json)")
        p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to pick")
        p.add_argument("--cache-dir", default=str(default_cache_dir()), help="cache directory")
        p.add_argument("--timeout", type=float, default=30.0, help="network timeout, seconds")

    p = sub.add_parser("mount", help="mount an image read-only at DIR")
    p.add_argument("ref", metavar="REF", help="image reference, e.g. localhost:5000/app:1.0")
    p.add_argument("dir", metavar="DIR", help="an empty directory")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--log-file", metavar="FILE", help="daemon log file")
    common(p)
    p.set_defaults(func=_cmd_mount)

    p = sub.add_parser("umount", help="unmount DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("-z", "--lazy", action="store_true", help="lazy unmount (busy mounts)")
    p.set_defaults(func=_cmd_umount)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocifs`` console script."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        print(f"ocifs: {_describe(exc)}", file=sys.stderr)
        if not isinstance(_first_error(exc), OcifsError):
            log.debug("traceback", exc_info=exc)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
