"""``scanstream bench``: drive an engine as modalities do, wait for every result, report throughput and latency."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from engine.commands.common import add_command
from engine.config import ConfigError


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``bench``."""
    bench = add_command(sub, "bench", cmd_bench,
                        "drive an engine with DICOM studies; report throughput and per-stage latency")
    bench.add_argument("--studies", type=int, default=8, help="studies to send (default 8)")
    bench.add_argument("--duration", type=float, help="stop starting studies after this many seconds")
    bench.add_argument("--concurrency", type=int, default=1,
                       help="closed loop: studies in flight; open loop: concurrent associations")
    bench.add_argument("--rate", type=float, help="open loop: Poisson arrivals, studies per second")
    bench.add_argument("--folder", type=Path, help="replay the DICOM studies in this folder (new UIDs each time)")
    bench.add_argument("--slices", type=int, default=48, help="generated studies: slices per series")
    bench.add_argument("--size", type=int, default=256, help="generated studies: rows and columns")
    bench.add_argument("--seed", type=int, default=1)
    bench.add_argument("--timeout", type=float, default=600.0, help="longest wait for one study's results (s)")
    bench.add_argument("--workers", type=int, default=1, help="workers of the engine started here")
    bench.add_argument("--sender", choices=["pynetdicom", "storescu"], default="pynetdicom",
                       help="the modality simulator: pynetdicom in-process, or DCMTK storescu per study")
    bench.add_argument("--host", help="drive a running engine at this host instead of starting one")
    bench.add_argument("--port", type=int, default=11112)
    bench.add_argument("--aet", default="SCANSTREAM")
    bench.add_argument("--http-url", default="http://127.0.0.1:8080", help="the running engine's HTTP port")
    bench.add_argument("--api-token", default=os.environ.get("SCANSTREAM_API_TOKEN", ""),
                       help="the running engine's API token (`scanstream users token NAME`; default "
                            "$SCANSTREAM_API_TOKEN)")
    bench.add_argument("--pacs", choices=["orthanc"], help="start a real Orthanc as the destination of the engine "
                       "started here, and measure to its acknowledgement (sent_to_destination)")
    bench.add_argument("--destination", help="AE@host:port of a running PACS the engine started here sends to")
    bench.add_argument("--model", help="the engine started here routes only to this model; zoo-* names load the "
                       "benchmark zoo (untrained canonical architectures)")
    bench.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="a plugins.options setting of the engine started here (repeatable), "
                            "e.g. zoo.unet3d.patch=64")
    bench.add_argument("--out", type=Path, default=Path("bench-report"), help="report folder")


def _plugin_options(pairs: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a pair without ``=`` is a usage error."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option: expected KEY=VALUE (e.g. zoo.unet3d.patch=64), got {pair!r}")
        options[key] = value
    return options


def cmd_bench(args: argparse.Namespace) -> int:
    """Send studies as modalities would, wait for every result, report throughput and per-stage latency."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.bench.report import terminal_table, write_report
    from engine.bench.run import BenchSettings, run_bench

    if args.rate is not None and args.rate <= 0:
        print("scanstream bench: --rate must be > 0 studies per second", file=sys.stderr)
        return 2
    settings = BenchSettings(
        studies=args.studies, duration_s=args.duration, mode="open" if args.rate else "closed",
        concurrency=args.concurrency, rate_per_s=args.rate, folder=args.folder, slices=args.slices, size=args.size,
        seed=args.seed, timeout_s=args.timeout, start=args.host is None, workers=args.workers, sender=args.sender,
        host=args.host or "127.0.0.1", port=args.port, aet=args.aet, http_url=args.http_url,
        api_token=args.api_token, pacs=args.pacs or "",
        destination=args.destination or "", model=args.model or "", plugin_options=_plugin_options(args.option))
    if (settings.pacs or settings.destination or settings.model or settings.plugin_options) and not settings.start:
        print("scanstream bench: --pacs/--destination/--model configure the engine started here; a running engine "
              "(--host) uses its own configuration", file=sys.stderr)
        return 2
    logging.getLogger("engine.dicom.store_scu").setLevel(logging.WARNING)  # one line per association would bury the bar
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]bench[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("preparing studies", total=None)
        result = run_bench(settings, progress=lambda: progress.advance(task),
                           on_total=lambda n: progress.update(task, total=n, description="studies with results"))
    paths = write_report(result, args.out)
    Console().print(terminal_table(result))
    summary = result["summary"]
    print(f"report: {args.out / 'report.md'} ({len(paths)} files)")
    bad = summary["split_series"] + summary["lost_series"] + summary["send_errors"] + summary["failed_deliveries"]
    return 1 if bad else 0
