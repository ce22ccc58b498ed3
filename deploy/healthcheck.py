"""Container health check for every ScanStream role (the images' HEALTHCHECK, the k8s worker probe).

It finds the ``scanstream`` process in the container, parses its command line with the
engine's own CLI parser and config loader, and checks what that role serves:

- ``receiver`` / ``serve``: ``GET /healthz`` on the effective ``http.port`` answers 200 (over HTTPS when
  ``http.tls_enabled``);
- ``worker``: an established TCP connection to the broker's port (workers have no HTTP
  endpoint; ZeroMQ reconnects on its own, so a lost link shows up here).

Exit status 0 = healthy, 1 = unhealthy, with one line on stdout saying why.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlsplit

from engine.cli import build_parser
from engine.config import load_config, with_overrides

ROLES = ("serve", "receiver", "worker")
TCP_ESTABLISHED = "01"


def scanstream_argv(cmdline: Sequence[str]) -> list[str] | None:
    """The arguments after the ``scanstream`` program in a command line, or None if it is not one.

    Matches the console script (``[python] .../scanstream ARGS``) and ``python -m engine.cli ARGS``.
    """
    for i, part in enumerate(cmdline):
        if Path(part).name == "scanstream":
            return list(cmdline[i + 1:])
        if part == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] == "engine.cli":
            return list(cmdline[i + 2:])
    return None


def find_engine_argv(proc: Path = Path("/proc")) -> list[str] | None:
    """The arguments of the lowest-numbered process in this container running a ScanStream role."""
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        argv = scanstream_argv([a.decode(errors="replace") for a in raw.split(b"\0") if a])
        if argv and argv[0] in ROLES:
            return argv
    return None


def established_remote_ports(proc_net: Path = Path("/proc/net")) -> set[int]:
    """Remote ports of this network namespace's established TCP connections (IPv4 and IPv6)."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == TCP_ESTABLISHED:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def check(argv: Sequence[str], environ: Mapping[str, str] | None = None, timeout: float = 5.0) -> tuple[bool, str]:
    """Health of the role that ``argv`` (arguments after ``scanstream``) starts, under ``environ``."""
    args = build_parser().parse_args(list(argv))
    environ = os.environ if environ is None else environ
    # The CLI flags that change what is checked: --http-port here, --broker below.
    config = with_overrides(load_config(args.config, environ),
                            http={"port": (getattr(args, "http_port", None), "--http-port")})
    if args.command == "worker":
        endpoint = args.broker or config.worker_broker
        url = urlsplit(endpoint)
        if url.scheme != "tcp" or url.port is None:
            return True, f"worker on {endpoint}: not TCP, connection not checked"
        if url.port in established_remote_ports():
            return True, f"worker connected to {endpoint}"
        return False, f"worker has no established connection to {endpoint}"
    host = config.http.host if config.http.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    url = f"{'https' if config.http.tls_enabled else 'http'}://{host}:{config.http.port}/healthz"
    context = None
    if config.http.tls_enabled:  # this container's own process: liveness, not the certificate, is checked here
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
            return reply.status == 200, f"{url}: {reply.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"


def main() -> int:
    argv = find_engine_argv()
    if argv is None:
        print("no scanstream role process found")
        return 1
    ok, message = check(argv)
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
