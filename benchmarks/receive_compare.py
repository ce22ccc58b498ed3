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

References measured in the same run bound what any receiver could do here:
receivers that answer without storing (``storescp --ignore``, and
``benchmarks.null_scp`` with ScanStream's acceptor and with pynetdicom's), the
fastest of which is the ceiling the sender and loopback allow; and the cost of
making one instance durable on this disk (write, fsync the file, fsync its
folder). A receiver that answers only once an instance is durable, one
instance at a time as storescu sends them, needs at least the ceiling's time
per instance plus that cost: the durable bound.
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

from benchmarks import null_scp
from benchmarks.common import parser, print_table, write_result
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing.peers import OrthancPeer
from engine.testing.ports import free_port
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
def serving(command: list[str], port: int, aet: str, stored: Callable[[], int],
            env: dict[str, str] | None = None) -> Iterator[tuple[int, str, Callable[[], int]]]:
    """A receiver process started with ``command``, once it answers C-ECHO as ``aet`` on ``port``; stopped after."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_echo(port, aet, process)
        yield port, aet, stored
    finally:
        stop(process)


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

    def stored() -> int:
        with sqlite3.connect(folder / "data" / "ledger.sqlite") as db:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    with serving([sys.executable, "-m", "engine.cli", "receiver", "--config", str(config)], port, "SCANSTREAM",
                 stored, env) as peer:
        yield peer


@contextmanager
def storescp(folder: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    port, out = free_port(), folder / "out"
    out.mkdir()
    with serving(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)], port, "STORESCP",
                 lambda: sum(1 for p in out.iterdir() if p.is_file()), NODELAY) as peer:
        yield peer


@contextmanager
def storescp_ignore(folder: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    """``storescp --ignore``: receives and answers every instance, stores none (-1: nothing to count)."""
    port = free_port()
    with serving(["storescp", "--ignore", "-aet", "IGNORESCP", str(port)], port, "IGNORESCP", lambda: -1,
                 NODELAY) as peer:
        yield peer


def null_acceptor(kind: str) -> Callable:
    """:mod:`benchmarks.null_scp` with ``kind``'s acceptor, in its own process: answering without storing."""

    @contextmanager
    def peer(folder: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
        port = free_port()
        with serving([sys.executable, "-m", "benchmarks.null_scp", str(port), "--acceptor", kind], port,
                     null_scp.AE_TITLE, lambda: -1) as running:
            yield running

    return peer


def durable_seconds(files: list[Path], folder: Path) -> float:
    """Seconds per instance to make each file durable in a new folder: write, fsync the file, fsync the folder."""
    folder.mkdir()
    contents = [path.read_bytes() for path in files]
    start = time.perf_counter()
    for index, data in enumerate(contents):
        with open(folder / str(index), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return (time.perf_counter() - start) / len(files)


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


def measure(peer: Callable, files: list[Path], megabytes: float, folder: Path, name: str,
            repeats: int) -> dict[str, object]:
    """MB/s of ``repeats`` sends to fresh instances of ``peer``; a storing peer must hold every instance after."""
    rates = []
    for attempt in range(repeats):
        run_dir = folder / f"{name}-{attempt}"
        run_dir.mkdir()
        with peer(run_dir) as (port, aet, stored):
            seconds = send_seconds(files, port, aet)
            held = stored()
            if held not in (-1, len(files)):
                raise RuntimeError(f"{name} stored {held} of {len(files)} instances")
        rates.append(megabytes / seconds)
    return {"best_mb_s": max(rates), "median_mb_s": statistics.median(rates), "runs": rates}


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
    references: dict[str, Callable] = {"storescp-ignore": storescp_ignore, "acceptor-null": null_acceptor("scanstream"),
                                       "pynetdicom-null": null_acceptor("pynetdicom")}
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="ss-receive-") as folder:
        files = write_ct_series(generate_ct_phantom(3, slices=slices, size=size), Path(folder) / "series")
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        for name, peer in {**peers, **references}.items():
            results[name] = measure(peer, files, megabytes, Path(folder), name, repeats)
        durable_s = statistics.median(durable_seconds(files, Path(folder) / f"durable-{attempt}")
                                      for attempt in range(repeats))
    best = {name: float(r["best_mb_s"]) for name, r in results.items()}  # type: ignore[arg-type]
    ceiling = max(best[name] for name in references)
    ceiling_s = megabytes / ceiling / len(files)
    durable_bound = megabytes / (len(files) * (ceiling_s + durable_s))
    base = best["scanstream"]
    rows = [[name, best[name], results[name]["median_mb_s"], base / best[name]] for name in results]
    rows.append(["durable bound (ceiling + durable write per instance)", durable_bound, "-", base / durable_bound])
    print(f"{len(files)} instances, {megabytes:.0f} MB, one association from storescu, {repeats} repeat(s)")
    print_table(["receiver", "best MB/s", "median MB/s", "ScanStream / this"], rows)
    for name, reason in skipped.items():
        print(f"{name}: skipped: {reason}")
    ratio = base / best["dcmtk-storescp"]
    print(f"durable write per instance on this disk: {durable_s * 1000:.2f} ms; the ceiling (fastest receiver "
          f"storing nothing) is {ceiling / best['dcmtk-storescp']:.2f}x DCMTK, the durable bound "
          f"{durable_bound / best['dcmtk-storescp']:.2f}x; storing nothing, ScanStream's acceptor "
          f"{best['acceptor-null'] / best['dcmtk-storescp']:.2f}x and pynetdicom's "
          f"{best['pynetdicom-null'] / best['dcmtk-storescp']:.2f}x")
    print(f"goal ScanStream >= 1.5x DCMTK: {'met' if ratio >= 1.5 else 'NOT met'} ({ratio:.2f}x)")
    write_result(args.out, "receive_compare", {"quick": args.quick, "instances": len(files), "megabytes": megabytes,
                                               "results": results, "skipped": skipped,
                                               "durable_write_s_per_instance": durable_s,
                                               "durable_bound_mb_s": durable_bound,
                                               "ratio_vs_dcmtk": ratio,
                                               "ratio_vs_durable_bound": base / durable_bound,
                                               "ratio_vs_acceptor_null": base / best["acceptor-null"],
                                               "ratio_vs_pynetdicom_null": base / best["pynetdicom-null"],
                                               "ceiling_mb_s": ceiling,
                                               "ceiling_vs_dcmtk": ceiling / best["dcmtk-storescp"],
                                               "ratio_vs_orthanc": base / best["orthanc"]
                                               if "orthanc" in best else None})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
