"""``ocifs mount`` and ``ocifs umount``."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from ocifs.cli._common import (
    add_image_options,
    describe_error,
    index_trust_of,
    platform_of,
    setup_logging,
    source_options,
    state_dir,
)
from ocifs.errors import OcifsError
from ocifs.mount import MountOptions, check_mountpoint, run_mount, unmount_ocifs
from ocifs.prefetch import PrefetchMode
from ocifs.sources import check_reference, open_source
from ocifs.status import status_file_for

__all__ = ["register"]

STARTER_POLL_S = 0.5

log = logging.getLogger("ocifs")


def _cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.dir).absolute()
    platform = platform_of(args)
    source_opts = source_options(args)
    # Parse the reference now: a malformed one fails before anything else happens.
    check_reference(args.ref)
    check_mountpoint(mountpoint)
    opts = MountOptions(
        mountpoint,
        Path(args.cache_dir),
        platform,
        cache_max=args.cache_max,
        prefetch=PrefetchMode(args.prefetch),
        index_trust=index_trust_of(args),
        status_file=status_file_for(mountpoint),
        allow_other=args.allow_other,
    )

    starter = os.getpid()

    def serve(ready: Callable[[str], None]) -> None:
        async def run() -> None:
            source = open_source(args.ref, source_opts)
            mounted = False

            def on_ready(fsname: str) -> None:
                nonlocal mounted
                mounted = True
                ready(fsname)

            async with trio.open_nursery() as nursery:
                if os.getpid() != starter:
                    nursery.start_soon(_give_up_without_starter, starter, lambda: mounted)
                await run_mount(source, opts, on_ready)
                nursery.cancel_scope.cancel()

        trio.run(run)

    if args.foreground:
        setup_logging(args.verbose)
        serve(lambda fsname: print(f"mounted {fsname} at {mountpoint}", file=sys.stderr))
        return 0
    return _daemonize(args, mountpoint, serve)


async def _give_up_without_starter(starter: int, mounted: Callable[[], bool]) -> None:
    """A daemon whose ``ocifs mount`` died before the tree was ready (killed, timed
    out) has nobody to report to: stop instead of working on for nothing."""
    while not mounted():
        if os.getppid() != starter:
            log.error("the ocifs mount that started this daemon is gone; giving up")
            raise OcifsError("the ocifs mount that started the daemon is gone")
        await trio.sleep(STARTER_POLL_S)


class _EarlyWarnings(logging.Handler):
    """Collects the warnings a daemon logs before the mount is ready, to show them on
    the terminal of the ``ocifs mount`` that started it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _default_log_file(mountpoint: Path) -> Path:
    tag = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:8]
    return state_dir() / f"mount-{mountpoint.name or 'root'}-{tag}.log"


def _daemonize(
    args: argparse.Namespace, mountpoint: Path, serve: Callable[[Callable[[str], None]], None]
) -> int:
    """Fork a daemon that mounts; return once it says the tree is ready (or why not).

    The credentials stay in memory across the fork: never on a command line.
    """
    if args.log_file:
        log_file = Path(args.log_file).absolute()
        if not log_file.parent.is_dir():
            raise OcifsError(f"--log-file {args.log_file}: no such directory {log_file.parent}")
    else:
        log_file = _default_log_file(mountpoint)
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            lines = pipe.read().decode("utf-8", "replace").splitlines()
        if lines and lines[0].startswith("ok"):
            for line in lines[1:]:
                print(f"ocifs: warning: {line}", file=sys.stderr)
            return 0
        os.waitpid(pid, 0)
        message = lines[0] if lines else f"mount daemon failed; see {log_file}"
        print(f"ocifs: {message}", file=sys.stderr)
        return 1
    # The daemon.
    os.close(read_fd)
    os.setsid()
    status = 1
    early = _EarlyWarnings()
    try:
        setup_logging(max(args.verbose, 1), log_file)
        logging.getLogger().addHandler(early)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)

        def ready(fsname: str) -> None:
            logging.getLogger().removeHandler(early)
            report = "\n".join([f"ok {fsname}", *early.lines]) + "\n"
            os.write(write_fd, report.encode())
            os.close(write_fd)

        serve(ready)
        status = 0
    except BaseException as exc:  # the daemon must report every failure, then exit
        log.error("%s", describe_error(exc))
        with contextlib.suppress(OSError):
            os.write(write_fd, (describe_error(exc) + "\n").encode())
    finally:
        logging.shutdown()
        os._exit(status)


def _cmd_umount(args: argparse.Namespace) -> int:
    unmount_ocifs(Path(args.dir).absolute(), lazy=args.lazy)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``mount`` and ``umount`` commands."""
    p = sub.add_parser("mount", help="mount an image read-only at DIR")
    p.add_argument("ref", metavar="REF", help="image reference, e.g. localhost:5000/app:1.0")
    p.add_argument("dir", metavar="DIR", help="an empty directory")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--log-file", metavar="FILE", help="daemon log file")
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users read the mount (needs user_allow_other in /etc/fuse.conf "
        "unless root)",
    )
    p.add_argument(
        "--prefetch",
        choices=[m.value for m in PrefetchMode],
        default=PrefetchMode.LANDMARK.value,
        help="background fetch after mount: eStargz landmark files (default), "
        "whole layers, or nothing",
    )
    add_image_options(p)
    p.set_defaults(func=_cmd_mount)

    p = sub.add_parser("umount", help="unmount DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("-z", "--lazy", action="store_true", help="lazy unmount (busy mounts)")
    p.set_defaults(func=_cmd_umount)
