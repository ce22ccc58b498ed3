"""``scanstream serve``, ``receiver`` and ``worker``: the engine's long-running roles."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from engine.commands.common import add_command, config_from_args


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``serve``, ``receiver`` and ``worker``."""
    serve = add_command(sub, "serve", cmd_serve, "run receiver, broker and workers on this machine")
    receiver = add_command(sub, "receiver", cmd_receiver, "run the DICOM receiver and job broker")
    for command in (serve, receiver):
        command.add_argument("--port", type=int, help="DICOM port (receiver.port)")
        command.add_argument("--data-dir", type=Path, help="spool, ledger and results (storage.data_dir)")
        command.add_argument("--http-port", type=int, help="health/metrics port (http.port)")
        command.add_argument("--broker-bind", help="ZeroMQ endpoint for workers (broker.bind)")
    serve.add_argument("--workers", type=int, help="worker processes (worker.count)")
    worker = add_command(sub, "worker", cmd_worker, "run one worker connected to a broker")
    worker.add_argument("--broker", help="broker endpoint, e.g. tcp://HOST:5570 (worker.broker)")
    worker.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)


def _run_receiver(args: argparse.Namespace, with_workers: bool) -> int:
    """Start the receiver role (and worker subprocesses), run until SIGTERM/SIGINT, stop in order.

    Exits 1 when the receiver gave up on a dead part (see ``receiver.unhealthy_exit_s``), else 0.
    """
    from engine.plugins import load_plugins
    from engine.roles.receiver import ReceiverRole
    from engine.roles.signals import stop_on_signals
    from engine.roles.supervisor import WorkerSupervisor

    config = config_from_args(args)
    stop = threading.Event()
    stop_on_signals(stop)
    role = ReceiverRole(config, load_plugins(config))
    role.start(on_fatal=stop.set)
    supervisor = WorkerSupervisor(config, role.broker.bound_address, config.worker.count) if with_workers else None
    if supervisor is not None:
        supervisor.start()
    try:
        stop.wait()
    finally:
        if supervisor is not None:
            supervisor.stop()
        role.stop()
    return 1 if role.failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Receiver, broker and worker subprocesses on this machine until SIGTERM/SIGINT."""
    return _run_receiver(args, with_workers=True)


def cmd_receiver(args: argparse.Namespace) -> int:
    """Receiver and broker only; workers connect from elsewhere."""
    return _run_receiver(args, with_workers=False)


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker connected to a broker."""
    from engine.roles.signals import stop_on_signals
    from engine.roles.worker import run_worker, stop_with_parent, worker_name

    config = config_from_args(args)
    stop = threading.Event()
    stop_on_signals(stop)
    if args.parent_pid:
        stop_with_parent(args.parent_pid, stop)
    run_worker(config, args.broker or config.worker_broker, stop, name=worker_name(args.index))
    return 0
