"""Build the preprocessing kernels: CUDA cubins with nvcc, the host test harness with g++.

Builds are cached under a cache directory (``$SCANSTREAM_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/scanstream/kernels``, else ``~/.cache/scanstream/kernels``), keyed by a
hash of the sources (the ``.cu`` and the shared header), the compiler's version string,
the target architecture and the flags, so editing a source or upgrading the compiler
rebuilds and anything else reuses the file.

Each cubin is compiled with ``-Xptxas -v``; the per-kernel register, stack and spill
figures are parsed from that report and kept next to the cubin as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

KERNEL_DIR = Path(__file__).resolve().parent
CUDA_SOURCE = KERNEL_DIR / "preprocess.cu"
MATH_HEADER = KERNEL_DIR / "preprocess_math.cuh"
HARNESS_SOURCE = KERNEL_DIR / "harness" / "ss_harness.cpp"
DEFAULT_ARCHES = ("sm_80", "sm_90")
NVCC_FLAGS = ("-cubin", "-O3", "-std=c++17", "-Xptxas", "-v")
GXX_FLAGS = ("-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror")
_ARCH_RE = re.compile(r"^sm_\d{2,3}[a-z]?$")
_ENTRY_RE = re.compile(r"(?:Compiling entry function|Function properties for) '?([A-Za-z_]\w*)'?")
_FRAME_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS_RE = re.compile(r"Used (\d+) registers")


class KernelBuildError(RuntimeError):
    """A compiler is missing or a compile failed; the message says which and shows its output."""


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reported for one kernel."""

    registers: int
    stack_frame_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


@dataclass(frozen=True)
class CubinBuild:
    """A compiled cubin: where it is, what it was built for, and its kernels' resources."""

    path: Path
    arch: str
    key: str
    resources: dict[str, KernelResources]
    cached: bool
    seconds: float


def default_cache_dir() -> Path:
    """The kernel cache directory (see the module docstring for the lookup order)."""
    explicit = os.environ.get("SCANSTREAM_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scanstream" / "kernels"


def find_tool(name: str, env_var: str) -> str:
    """The path of compiler ``name`` (``$env_var`` overrides PATH); raise :class:`KernelBuildError` if absent."""
    candidate = os.environ.get(env_var) or name
    found = shutil.which(candidate)
    if found is None:
        raise KernelBuildError(
            f"{name} not found (looked for {candidate!r} on PATH; set {env_var} to its path)")
    return found


def tool_version(tool: str) -> str:
    """The compiler's ``--version`` output, which goes into the cache key."""
    completed = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise KernelBuildError(f"{tool} --version failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


def source_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over the names and contents of ``paths`` (order matters)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def cache_key(digest: str, compiler_version: str, target: str, flags: Iterable[str]) -> str:
    """The cache key of one build: sources, compiler, target and flags (24 hex digits)."""
    text = "\n".join([digest, compiler_version, target, *flags])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def parse_ptxas_report(text: str) -> dict[str, KernelResources]:
    """Per-kernel registers, stack frame and spills from ``-Xptxas -v`` output.

    ptxas prints, per function, an entry line naming it, a line with stack frame and
    spill bytes, and a ``Used N registers`` line; they are attributed to the most
    recently named function.
    """
    current: str | None = None
    frames: dict[str, tuple[int, int, int]] = {}
    registers: dict[str, int] = {}
    for line in text.splitlines():
        entry = _ENTRY_RE.search(line)
        if entry:
            current = entry.group(1)
            continue
        frame = _FRAME_RE.search(line)
        if frame and current is not None:
            frames[current] = (int(frame.group(1)), int(frame.group(2)), int(frame.group(3)))
            continue
        regs = _REGS_RE.search(line)
        if regs and current is not None:
            registers[current] = int(regs.group(1))
    return {
        name: KernelResources(registers[name], *frames.get(name, (0, 0, 0)))
        for name in sorted(registers)
    }


def _check_arch(arch: str) -> None:
    if not _ARCH_RE.match(arch):
        raise ValueError(f"arch must look like 'sm_80', got {arch!r}")


def _run_compiler(command: list[str], what: str) -> str:
    """Run a compile; return its stderr+stdout, or raise with the compiler's output."""
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    output = completed.stderr + completed.stdout
    if completed.returncode != 0:
        raise KernelBuildError(f"{what} failed (exit {completed.returncode}): {' '.join(command)}\n{output}")
    return output


def _write_json(path: Path, payload: dict[str, object]) -> None:
    """Write ``payload`` atomically (temp file in the same directory, then rename)."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=1, sort_keys=True)
    os.replace(handle.name, path)


def _load_resources(path: Path) -> dict[str, KernelResources]:
    payload = json.loads(path.read_text())
    return {name: KernelResources(**fields) for name, fields in payload["resources"].items()}


def build_cubin(arch: str = "sm_80", *, cache_dir: Path | None = None, source: Path = CUDA_SOURCE,
                header: Path = MATH_HEADER) -> CubinBuild:
    """Compile ``source`` to a cubin for ``arch`` (reusing the cached one when the key matches).

    Raises :class:`KernelBuildError` when nvcc is missing or the compile fails.
    """
    _check_arch(arch)
    nvcc = find_tool("nvcc", "SCANSTREAM_NVCC")
    key = cache_key(source_digest([source, header]), tool_version(nvcc), arch, NVCC_FLAGS)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    cubin = directory / f"{source.stem}-{arch}-{key}.cubin"
    report = cubin.with_suffix(".json")
    if cubin.exists() and report.exists():
        return CubinBuild(cubin, arch, key, _load_resources(report), cached=True, seconds=0.0)
    partial = cubin.with_name(f"{cubin.name}.{os.getpid()}.tmp")
    command = [nvcc, *NVCC_FLAGS, f"-arch={arch}", "-I", str(header.parent), "-o", str(partial), str(source)]
    started = time.perf_counter()
    output = _run_compiler(command, f"nvcc ({arch})")
    seconds = time.perf_counter() - started
    resources = parse_ptxas_report(output)
    _write_json(report, {"arch": arch, "key": key, "resources": {k: asdict(v) for k, v in resources.items()}})
    os.replace(partial, cubin)
    return CubinBuild(cubin, arch, key, resources, cached=False, seconds=seconds)


def build_harness(*, cache_dir: Path | None = None, source: Path = HARNESS_SOURCE,
                  header: Path = MATH_HEADER) -> Path:
    """Compile the host harness (the header's math, callable through ctypes) into a shared library.

    Raises :class:`KernelBuildError` when g++ is missing or the compile fails.
    """
    gxx = find_tool("g++", "SCANSTREAM_CXX")
    key = cache_key(source_digest([source, header]), tool_version(gxx), "host", GXX_FLAGS)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    library = directory / f"{source.stem}-{key}.so"
    if library.exists():
        return library
    partial = library.with_name(f"{library.name}.{os.getpid()}.tmp")
    _run_compiler([gxx, *GXX_FLAGS, "-I", str(header.parent), "-o", str(partial), str(source)], "g++ (harness)")
    os.replace(partial, library)
    return library
