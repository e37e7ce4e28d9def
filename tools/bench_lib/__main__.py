"""``tools/bench [--quick] [--json PATH]``: ocifs against a full pull, ratarmount and
native disk, side by side on one image in one run; prints one table of ratios and
writes them as JSON. Run through ``tools/bench``, which does the set-up first."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench_lib.cold import REPO, Endpoint, Peaks, cold_rows, prepare_variants
from bench_lib.context import Bench
from bench_lib.image import CACHE_ROOT, cached_image, policy_file, push
from bench_lib.report import host_facts, print_table, write_json
from bench_lib.rows import Row
from bench_lib.services import Proxy, Registry, drop_caches, sigterm_as_exit
from bench_lib.warm import rss_row, warm_rows

DEFAULT_JSON = Path(__file__).resolve().parent.parent / "bench-results.json"
WAN_DELAY_MS = 20.0
WAN_RATE_MBPS = 25.0
MIN_RUNS = 3


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="one run of each measure, loopback only (a smoke check, not figures)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the JSON")
    p.add_argument("--runs", type=int, default=MIN_RUNS, help="runs per measure (at least 3)")
    p.add_argument("--no-wan", action="store_true", help="skip the WAN-model cold runs")
    p.add_argument("--delay-ms", type=float, default=WAN_DELAY_MS, help="WAN model: per request")
    p.add_argument("--rate-mbps", type=float, default=WAN_RATE_MBPS, help="WAN model: MB/s")
    args = p.parse_args(argv)
    if not args.quick and args.runs < MIN_RUNS:
        p.error(f"--runs must be at least {MIN_RUNS} (use --quick for a smoke check)")
    return args


def _tool(name: str) -> str:
    """A console script of this venv (beside the running interpreter), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"tools/bench: {name} not found; run tools/bench (it installs it)")
    return found


def _has_ocifs_grep(ocifs: str) -> bool:
    proc = subprocess.run([ocifs, "grep", "--help"], capture_output=True, check=False)
    return proc.returncode == 0


def run(args: argparse.Namespace) -> int:
    """Set everything up, measure, print, clean up."""
    log = sys.stderr
    image = cached_image(log)
    rows: list[Row] = []
    with ExitStack() as stack, sigterm_as_exit():
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE_ROOT))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        policy = stack.enter_context(policy_file())
        ocifs = _tool("ocifs")
        bench = Bench(
            work=work,
            image=image,
            ocifs=ocifs,
            ratarmount=_tool("ratarmount"),
            policy=policy,
            runs=1 if args.quick else args.runs,
            log=log,
            stack=stack,
            ocifs_grep=_has_ocifs_grep(ocifs),
        )
        if not drop_caches():
            bench.can_drop = False
            bench.notes.append("page cache NOT dropped (not root?): cold figures are warm")
        (work / "registry").mkdir()
        registry = Registry(work / "registry")
        stack.callback(registry.close)
        bench.say(f"registry on {registry.host}; pushing the image")
        push(image, registry.host, REPO)
        prepare_variants(bench, registry.host)
        endpoints = [Endpoint("loopback", registry.host, registry)]
        if not (args.quick or args.no_wan):
            proxy = Proxy(registry.host, work, args.delay_ms, args.rate_mbps)
            stack.callback(proxy.close)
            label = f"WAN model ({args.delay_ms:g} ms/request, {args.rate_mbps:g} MB/s)"
            endpoints.append(Endpoint(label, proxy.host, proxy))
        peaks = Peaks()
        for ep in endpoints:
            rows += cold_rows(bench, ep, peaks)
        rows += warm_rows(bench, endpoints[0])
        rows.append(rss_row(peaks))
        notes = bench.notes
        if args.quick:
            notes.append("--quick: one run per measure, loopback only; not figures to quote")
    facts = host_facts(image)
    print_table(rows, facts, notes)
    settings = {
        "runs": 1 if args.quick else args.runs,
        "quick": args.quick,
        "wan": {"delay_ms": args.delay_ms, "rate_mbps": args.rate_mbps},
    }
    write_json(args.json, rows, facts, notes, settings)
    print(f"JSON: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return run(_parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
