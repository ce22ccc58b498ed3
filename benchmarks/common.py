"""Shared benchmark helpers: machine description, timing, JSON and table output."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from engine.bench.machine import describe_machine

DEFAULT_OUT = Path("benchmarks/results")


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and runtime versions: recorded next to every figure."""
    return describe_machine()


def best_seconds(run: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones (least disturbed by a shared machine)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def median(values: list[float]) -> float:
    """The median, 0 for no values."""
    return statistics.median(values) if values else 0.0


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: ``--quick`` (tiny sizes, for the smoke test) and ``--out``."""
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--quick", action="store_true", help="tiny sizes: checks the command works, not speed")
    arguments.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    return arguments


def write_result(out: Path, name: str, result: dict[str, Any]) -> Path:
    """``<out>/<name>.json`` with the machine description added."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2))
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table on stdout (pasted into benchmarks/README.md as Markdown)."""
    text = [[str(h) for h in headers]] + [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
                                          for row in rows]
    print("| " + " | ".join(text[0]) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in text[1:]:
        print("| " + " | ".join(row) + " |")
