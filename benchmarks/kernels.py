"""Registers, stack and spills of every CUDA preprocessing kernel, from ``nvcc -Xptxas -v``, for sm_80 and sm_90.

Run: ``python -m benchmarks.kernels``. Needs nvcc (no GPU).
"""

from __future__ import annotations

from dataclasses import asdict

from benchmarks.common import parser, print_table, write_result
from engine.kernels.build import DEFAULT_ARCHES, build_cubin


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rows, report = [], {}
    for arch in DEFAULT_ARCHES:
        build = build_cubin(arch)
        report[arch] = {name: asdict(resources) for name, resources in sorted(build.resources.items())}
        rows.extend([arch, name, r.registers, r.stack_frame_bytes, r.spill_store_bytes, r.spill_load_bytes]
                    for name, r in sorted(build.resources.items()))
    print_table(["arch", "kernel", "registers", "stack bytes", "spill stores", "spill loads"], rows)
    write_result(args.out, "kernels", {"resources": report})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
