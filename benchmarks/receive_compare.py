"""Receive throughput: ScanStream's receiver vs DCMTK storescp and Orthanc, the same ~100 MB CT series from storescu.

Run: ``python -m benchmarks.receive_compare [--quick] [--repeats 3]``. Each
receiver runs alone on free loopback ports with a fresh folder per repeat and
gets the same series (200 slices of 512x512 int16, explicit little endian)
from DCMTK ``storescu`` over one association, every DCMTK peer with
``TCP_NODELAY=1``. ScanStream: ``scanstream receiver`` (spool with fsync of
file and folder, SQLite ledger, job routing), checked afterwards to hold every
instance. DCMTK: ``storescp`` writing to disk (no fsync). Orthanc (Debian
package): its own storage and SQLite index; skipped with the reason when the
``Orthanc`` binary is absent. Figures: MB/s (best and median of the repeats)
and ScanStream's ratio to each. The issue's goal: >= 1.5x DCMTK.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import parser, print_table, write_result
from engine.phantom import generate_ct_phantom, write_ct_series
from engine.peers import OrthancPeer
from engine.ports import free_port
from engine.testing import write_config

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def wait_echo(port: int, aet: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until a C-ECHO to ``aet`` on ``port`` succeeds (the peer is up)."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["echoscu", "-aec", aet, "127.0.0.1", str(port)], capture_output=True,
                         env=NODELAY).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{aet} did not come up on port {port}")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def scanstream(folder: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    port = free_port()
    config = write_config(folder / "scanstream.toml", {
        "receiver": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(folder / "data"), "min_free_bytes": 0},
        "broker": {"bind": f"tcp://127.0.0.1:{free_port()}"},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "WARNING"},
    })
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
    process = subprocess.Popen([sys.executable, "-m", "engine.cli", "receiver", "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stored() -> int:
        with sqlite3.connect(folder / "data" / "ledger.sqlite") as db:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    try:
        wait_echo(port, "SCANSTREAM", process)
        yield port, "SCANSTREAM", stored
    finally:
        stop(process)


@contextmanager
def storescp(folder: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    port = free_port()
    out = folder / "out"
    out.mkdir()
    process = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)], env=NODELAY,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_echo(port, "STORESCP", process)
        yield port, "STORESCP", lambda: sum(1 for p in out.iterdir() if p.is_file())
    finally:
        stop(process)


@contextmanager
def orthanc(folder: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    with OrthancPeer(folder) as peer:
        yield peer.dicom_port, peer.ae_title, peer.instance_count


def send_seconds(files: list[Path], port: int, aet: str) -> float:
    """storescu of every file over one association; seconds from start to exit."""
    start = time.perf_counter()
    done = subprocess.run(["storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, files)], env=NODELAY,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"storescu to {aet} failed: {done.stderr[-500:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args(argv)
    slices, size, repeats = (12, 128, 1) if args.quick else (200, 512, args.repeats)
    peers: dict[str, Callable] = {"scanstream": scanstream, "dcmtk-storescp": storescp}
    skipped = {}
    if shutil.which("Orthanc"):
        peers["orthanc"] = orthanc
    else:
        skipped["orthanc"] = "the Orthanc binary is not installed (apt-get install orthanc)"
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ss-receive-") as folder:
        files = write_ct_series(generate_ct_phantom(3, slices=slices, size=size), Path(folder) / "series")
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        for name, peer in peers.items():
            rates = []
            for attempt in range(repeats):
                run_dir = Path(folder) / f"{name}-{attempt}"
                run_dir.mkdir()
                with peer(run_dir) as (port, aet, stored):
                    seconds = send_seconds(files, port, aet)
                    if stored() != len(files):
                        raise RuntimeError(f"{name} stored {stored()} of {len(files)} instances")
                rates.append(megabytes / seconds)
            results[name] = {"best_mb_s": max(rates), "median_mb_s": statistics.median(rates), "runs": rates}
    base = results["scanstream"]["best_mb_s"]
    rows = [[name, r["best_mb_s"], r["median_mb_s"], base / r["best_mb_s"]] for name, r in results.items()]
    print(f"{len(files)} instances, {megabytes:.0f} MB, one association from storescu, {repeats} repeat(s)")
    print_table(["receiver", "best MB/s", "median MB/s", "ScanStream / this"], rows)
    for name, reason in skipped.items():
        print(f"{name}: skipped: {reason}")
    ratio = base / results["dcmtk-storescp"]["best_mb_s"]
    print(f"goal ScanStream >= 1.5x DCMTK: {'met' if ratio >= 1.5 else 'NOT met'} ({ratio:.2f}x)")
    write_result(args.out, "receive_compare", {"quick": args.quick, "instances": len(files), "megabytes": megabytes,
                                               "results": results, "skipped": skipped,
                                               "ratio_vs_dcmtk": ratio,
                                               "ratio_vs_orthanc": base / results["orthanc"]["best_mb_s"]
                                               if "orthanc" in results else None})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
