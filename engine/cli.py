"""The ``scanstream`` command: serve, receiver, worker, send, demo, bench, plugins, models, keys, status, requeue."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from engine import __version__
from engine.api import PluginError
from engine.broker.security import CurveError, create_keys
from engine.config import ConfigError, EngineConfig, load_config
from engine.logs import configure_logging, get_logger
from engine.tls import TlsError

log = get_logger("engine.cli")


def with_overrides(config: EngineConfig, **sections: dict[str, Any]) -> EngineConfig:
    """A copy of ``config`` with some keys of some sections replaced (None values ignored)."""
    update = {}
    for name, values in sections.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            update[name] = getattr(config, name).model_copy(update=values)
    return config.model_copy(update=update)


def _config(args: argparse.Namespace) -> EngineConfig:
    config = load_config(args.config)
    return with_overrides(
        config,
        receiver={"port": getattr(args, "port", None)},
        storage={"data_dir": getattr(args, "data_dir", None)},
        worker={"count": getattr(args, "workers", None)},
        http={"port": getattr(args, "http_port", None)},
        broker={"bind": getattr(args, "broker_bind", None)},
    )


def _run_receiver(args: argparse.Namespace, with_workers: bool) -> int:
    """Start the receiver role (and worker subprocesses), run until SIGTERM/SIGINT, stop in order."""
    from engine.plugins import load_plugins
    from engine.roles import ReceiverRole, WorkerSupervisor, stop_on_signals

    config = _config(args)
    stop = threading.Event()
    stop_on_signals(stop)
    role = ReceiverRole(config, load_plugins(config))
    role.start()
    supervisor = WorkerSupervisor(config, role.broker.bound_address, config.worker.count) if with_workers else None
    if supervisor is not None:
        supervisor.start()
    try:
        stop.wait()
    finally:
        if supervisor is not None:
            supervisor.stop()
        role.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Receiver, broker and worker subprocesses on this machine until SIGTERM/SIGINT."""
    return _run_receiver(args, with_workers=True)


def cmd_receiver(args: argparse.Namespace) -> int:
    """Receiver and broker only; workers connect from elsewhere."""
    return _run_receiver(args, with_workers=False)


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker connected to a broker."""
    from engine.roles import run_worker, stop_on_signals, stop_with_parent, worker_name

    config = _config(args)
    stop = threading.Event()
    stop_on_signals(stop)
    if args.parent_pid:
        stop_with_parent(args.parent_pid, stop)
    run_worker(config, args.broker or config.worker_broker, stop, name=worker_name(args.index))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """C-STORE files and folders to a DICOM node."""
    from engine.sender import SendError, send_files

    try:
        report = send_files(args.paths, args.host, args.port, args.aet, args.calling_aet)
    except SendError as exc:
        print(f"send failed: {exc}", file=sys.stderr)
        return 2
    print(f"sent {report.sent} instance(s), {report.bytes_sent / 1e6:.1f} MB; "
          f"failed {len(report.failed)}; skipped {len(report.skipped)} non-DICOM file(s)")
    for path, code in report.failed:
        print(f"  failed: {path} status={'none' if code is None else hex(code)}", file=sys.stderr)
    return 0 if not report.failed else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the engine, send a phantom CT study over DICOM, print the findings."""
    from engine.demo import run_demo

    return run_demo(_config(args), seed=args.seed, timeout=args.timeout)


def cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins, models and output kinds."""
    from engine.plugins import load_plugins

    loaded = load_plugins(_config(args))
    print("plugins:")
    for name in loaded.plugin_names:
        print(f"  {name}")
    from engine.runtime.prepare import describe_choice

    config = _config(args)
    print("models:")
    for spec in loaded.models.all():
        print(f"  {spec.name} {spec.version}  outputs={','.join(spec.outputs)}  {spec.description}")
        print(f"    backend: {describe_choice(spec, config.worker, measure=not args.no_measure)}")
    print("outputs:")
    for kind in loaded.outputs.kinds():
        print(f"  {kind}")
    return 0


def cmd_plugins_check(args: argparse.Namespace) -> int:
    """Check a plugin's models end to end on a phantom series; 0 when every check passes, 1 otherwise."""
    from rich.console import Console

    from engine.plugin_check import check_plugin, render

    report = check_plugin(args.name, _config(args), export=args.export)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 120).print(render(report))  # pipes get 120, not 80
    return 0 if report.ok else 1


def cmd_models(args: argparse.Namespace) -> int:
    """Export, build and time models now, so workers start without doing it."""
    from engine.plugins import load_plugins
    from engine.runtime.prepare import prepare_model

    config = _config(args)
    loaded = load_plugins(config)
    names = args.model or [spec.name for spec in loaded.models.all()]
    failures = 0
    print(f"model cache: {config.worker.model_cache_path()}")
    for name in names:
        prepared = prepare_model(loaded.models.get(name), config.worker, refresh=args.refresh)
        print(f"{prepared.name} {prepared.version}")
        print(f"  onnx: {prepared.onnx or 'none (no input_shape declared)'}")
        if prepared.plan is not None:
            print(f"  tensorrt plan: {prepared.plan}")
        if prepared.problem is not None:
            failures += 1
            print(f"  problem: {prepared.problem}")
        elif prepared.choice is not None:
            print(f"  backend: {prepared.choice.backend} on {prepared.choice.device}: {prepared.choice.reason}")
    return 1 if failures else 0


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
        host=args.host or "127.0.0.1", port=args.port, aet=args.aet, http_url=args.http_url, pacs=args.pacs or "",
        destination=args.destination or "", model=args.model or "", plugin_options=_plugin_options(args.option))
    if (settings.pacs or settings.destination or settings.model or settings.plugin_options) and not settings.start:
        print("scanstream bench: --pacs/--destination/--model configure the engine started here; a running engine "
              "(--host) uses its own configuration", file=sys.stderr)
        return 2
    logging.getLogger("engine.sender").setLevel(logging.WARNING)  # one line per association would bury the bar
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


def cmd_keys(args: argparse.Namespace) -> int:
    """Create a CurveZMQ key pair for the broker or a worker."""
    public, secret = create_keys(args.out, args.name)
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (keep it on this host, mode 0600)")
    print("broker: broker.curve_secret_key = <its .key_secret>, broker.curve_authorized_keys = <folder of worker .key>")
    print("worker: worker.curve_secret_key = <its .key_secret>, worker.curve_server_key = <the broker's .key>")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Studies, series, queue depth, in-flight and failed jobs, from the ledger."""
    from engine.receiver.ledger import Ledger

    config = _config(args)
    path = config.storage.ledger_path
    if not path.exists():
        print(f"no ledger at {path}: nothing received yet", file=sys.stderr)
        return 1
    from engine.latency import percentiles

    ledger = Ledger(path)
    try:
        counts = ledger.status_counts()
        failed = [job for job in ledger.list_jobs() if job.state in ("failed", "dead")]
        undelivered = [row for row in ledger.deliveries() if row.state == "failed"]
        latency = percentiles(ledger.timelines())
    finally:
        ledger.close()
    if args.json:
        print(json.dumps({"counts": counts, "failed": [
            {"job": j.job_id, "model": j.model, "state": j.state, "reason": j.reason} for j in failed],
            "failed_deliveries": [{"job": d.job_id, "destination": d.destination, "attempts": d.attempts,
                                   "reason": d.reason} for d in undelivered],
            "latency_s": latency}, indent=2))
        return 0
    for key, value in counts.items():
        print(f"{key:>22}: {value}")
    for job in failed:
        print(f"  {job.state}: job {job.job_id} model {job.model}: {job.reason}")
    for row in undelivered:
        print(f"  delivery failed: job {row.job_id} to {row.destination} after {row.attempts} attempt(s): {row.reason}")
    if latency:
        print("latency of done jobs (seconds):")
        print(f"{'stage':>14} {'count':>6} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
        for stage, row in latency.items():
            print(f"{stage:>14} {row['count']:>6} {row['p50']:>9.4f} {row['p95']:>9.4f} {row['p99']:>9.4f} "
                  f"{row['max']:>9.4f}")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    """Queue failed or dead-lettered jobs again, or a done job's failed deliveries (picked up within seconds)."""
    import time

    from engine.receiver.ledger import Ledger

    config = _config(args)
    if not config.storage.ledger_path.exists():
        print(f"no ledger at {config.storage.ledger_path}", file=sys.stderr)
        return 1
    ledger = Ledger(config.storage.ledger_path)
    missing, jobs, deliveries = [], 0, 0
    try:
        for job in args.jobs:
            if ledger.requeue(job, time.time()):
                jobs += 1
                continue
            failed = [row for row in ledger.deliveries([job]) if row.state == "failed"]
            deliveries += sum(ledger.requeue_delivery(job, row.destination, time.time()) for row in failed)
            if not failed:
                missing.append(job)
    finally:
        ledger.close()
    for job in missing:
        print(f"job {job} is not failed or dead-lettered and has no failed delivery (or does not exist)",
              file=sys.stderr)
    print(f"requeued {jobs} job(s) and {deliveries} failed deliver{'y' if deliveries == 1 else 'ies'}")
    return 0 if not missing else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanstream", description="Streaming inference engine for imaging devices")
    parser.add_argument("--version", action="version", version=f"scanstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        command.add_argument("--config", help="TOML config file (default ./scanstream.toml when present)")
        return command

    serve = add("serve", cmd_serve, "run receiver, broker and workers on this machine")
    receiver = add("receiver", cmd_receiver, "run the DICOM receiver and job broker")
    for command in (serve, receiver):
        command.add_argument("--port", type=int, help="DICOM port (receiver.port)")
        command.add_argument("--data-dir", type=Path, help="spool, ledger and results (storage.data_dir)")
        command.add_argument("--http-port", type=int, help="health/metrics port (http.port)")
        command.add_argument("--broker-bind", help="ZeroMQ endpoint for workers (broker.bind)")
    serve.add_argument("--workers", type=int, help="worker processes (worker.count)")
    worker = add("worker", cmd_worker, "run one worker connected to a broker")
    worker.add_argument("--broker", help="broker endpoint, e.g. tcp://HOST:5570 (worker.broker)")
    worker.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    send = add("send", cmd_send, "C-STORE DICOM files or folders (a modality simulator)")
    send.add_argument("paths", nargs="+", type=Path)
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=11112)
    send.add_argument("--aet", default="SCANSTREAM", help="called AE title")
    send.add_argument("--calling-aet", default="SCANSTREAM_SCU")
    demo = add("demo", cmd_demo, "start the engine, send a phantom CT study, print the findings")
    demo.add_argument("--data-dir", type=Path)
    demo.add_argument("--seed", type=int, default=2024)
    demo.add_argument("--timeout", type=float, default=180.0)
    plugins = add("plugins", cmd_plugins, "list plugins, models (with the backend each will use, and why) and outputs")
    plugins.add_argument("--no-measure", action="store_true",
                         help="do not time CPU backends that have not been timed on this host yet")
    plugins_commands = plugins.add_subparsers(dest="plugins_command", metavar="{check}")
    check_help = "check a plugin's models end to end: hooks, spec, weights, a phantom run, every output re-read"
    check = plugins_commands.add_parser("check", help=check_help, description=check_help)
    check.set_defaults(func=cmd_plugins_check)
    check.add_argument("name", help="a plugin as `scanstream plugins` lists it, or a model name")
    check.add_argument("--json", action="store_true", help="print the checks as JSON")
    check.add_argument("--export", action="store_true",
                       help="also export each model to ONNX and compare ONNX Runtime with torch")
    check.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file (as for `plugins`)")
    models = add("models", cmd_models, "prepare models ahead of time: ONNX export, TensorRT plan, backend timing")
    models.add_argument("action", choices=["build"])
    models.add_argument("--model", action="append", help="only this model (repeatable; default all)")
    models.add_argument("--refresh", action="store_true", help="time the CPU backends again")
    bench = add("bench", cmd_bench, "drive an engine with DICOM studies; report throughput and per-stage latency")
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
    bench.add_argument("--pacs", choices=["orthanc"], help="start a real Orthanc as the destination of the engine "
                       "started here, and measure to its acknowledgement (sent_to_destination)")
    bench.add_argument("--destination", help="AE@host:port of a running PACS the engine started here sends to")
    bench.add_argument("--model", help="the engine started here routes only to this model; zoo-* names load the "
                       "benchmark zoo (untrained canonical architectures)")
    bench.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="a plugins.options setting of the engine started here (repeatable), "
                            "e.g. zoo.unet3d.patch=64")
    bench.add_argument("--out", type=Path, default=Path("bench-report"), help="report folder")
    keys = add("keys", cmd_keys, "create a CurveZMQ key pair (NAME.key, NAME.key_secret) for the broker or a worker")
    keys.add_argument("name", help="e.g. broker, or the worker's host name")
    keys.add_argument("--out", type=Path, default=Path("."), help="folder for the two files (default .)")
    status = add("status", cmd_status, "studies, queue depth, in-flight and failed jobs")
    status.add_argument("--data-dir", type=Path)
    status.add_argument("--json", action="store_true")
    requeue = add("requeue", cmd_requeue, "queue failed or dead-lettered jobs again")
    requeue.add_argument("jobs", nargs="+", help="job ids, as `scanstream status` lists them")
    requeue.add_argument("--data-dir", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scanstream`` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level)
    try:
        return int(args.func(args))
    except (ConfigError, PluginError, CurveError, TlsError) as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
