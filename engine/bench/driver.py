"""Drive an engine as modalities would and wait for every result (``scanstream bench``).

Closed loop: ``concurrency`` clients, each sends a study (one association), waits
for its results, then sends the next (LoadGen's "server" is open loop; this is
its "multi-stream"). Open loop: studies start at Poisson arrivals of ``rate``
per second on up to ``concurrency`` associations, whatever the results are
doing. Either way every study's outcome is polled from the engine's
``/api/studies/<uid>`` until final, and checked: a series the engine split in
two (completed, then reopened) or lost (fewer instances stored than sent, or
absent) is counted; both must be 0.

Times: ``first_sent``/``last_sent`` on this host's clock (before the association,
after the last C-STORE response); ``result_written`` is the engine's ledger time
of the last job of the study, so ``sent_to_result`` assumes the two clocks agree
(same host, or NTP); with destinations, ``result_delivered`` is when the last
destination acknowledged the study's last result (``sent_to_destination``).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from engine.bench.workload import Study
from engine.config import ConfigError
from engine.logs import get_logger
from engine.dicom.store_scu import SendError, send_files

log = get_logger(__name__)

POLL_S = 0.05
MAX_WAIT_S = 30.0  # one held request's longest wait (the engine allows 60)
HTTP_TIMEOUT_S = 5.0  # beyond the held time


@dataclass(frozen=True)
class Target:
    """Where the engine is: DICOM address and AE title, and its HTTP base URL."""

    host: str
    port: int
    called_aet: str
    http_url: str
    calling_aet: str = "SCANSTREAM_BENCH"
    sender: str = "pynetdicom"  # or "storescu" (DCMTK, run with TCP_NODELAY=1)
    api_token: str = ""  # a console user's API token (`scanstream users token NAME`): the study API needs one


@dataclass
class StudyOutcome:
    """One sent study: send times, what the engine reports, and the checks."""

    study: Study
    first_sent: float
    last_sent: float = 0.0
    sent_ok: bool = False
    send_error: str | None = None
    report: dict[str, Any] | None = None
    result_written: float | None = None
    result_delivered: float | None = None
    split_series: int = 0
    lost_series: int = 0
    failed_jobs: int = 0
    failed_deliveries: int = 0

    def as_dict(self) -> dict[str, Any]:
        jobs = (self.report or {}).get("jobs", [])
        return {"study_uid": self.study.study_uid, "first_sent": self.first_sent, "last_sent": self.last_sent,
                "result_written": self.result_written, "result_delivered": self.result_delivered,
                "failed_deliveries": self.failed_deliveries, "instances": self.study.instances,
                "bytes": self.study.nbytes, "send_error": self.send_error, "split_series": self.split_series,
                "lost_series": self.lost_series, "failed_jobs": self.failed_jobs,
                "jobs": [{"model": j["model"], "state": j["state"], "finished": j.get("finished"),
                          "stages_s": j.get("stages_s", {}), "artifacts": j.get("artifacts", [])} for j in jobs]}


def fetch_study(target: Target, study_uid: str, wait_s: float = 0.0) -> dict[str, Any] | None:
    """The engine's report on a study, or None while it does not know the study; with ``wait_s`` the engine
    answers once the study is final or ``wait_s`` passed."""
    url = f"{target.http_url}/api/studies/{study_uid}" + (f"?wait_s={wait_s:.3f}" if wait_s > 0 else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {target.api_token}"}
                                     if target.api_token else {})
    try:
        with urllib.request.urlopen(request, timeout=wait_s + HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        if error.code == 401:
            raise ConfigError("the engine's study API needs a console user's token: --api-token or "
                              "SCANSTREAM_API_TOKEN (`scanstream users token NAME` on the engine's host)") from None
        raise


def _count_series(outcome: StudyOutcome, report: dict) -> None:
    """Lost series (fewer instances stored than sent) and split ones (completed more than once)."""
    stored = {s["series_uid"]: s for s in report["series"]}
    for series_uid, sent in outcome.study.series.items():
        row = stored.get(series_uid)
        if row is None or row["instances"] < sent:
            outcome.lost_series += 1
        elif row["revision"] > 1:
            outcome.split_series += 1


def _latest_jobs(report: dict) -> list[dict]:
    """The jobs of each series' latest revision (earlier revisions' jobs are history)."""
    latest = {s["series_uid"]: s["revision"] for s in report["series"]}
    return [j for j in report["jobs"] if j["series_revision"] == latest.get(j["series_uid"])]


def _count_results(outcome: StudyOutcome, jobs: list[dict]) -> None:
    """Failed jobs and deliveries, and when the last result was written and delivered."""
    outcome.failed_jobs = sum(1 for j in jobs if j["state"] != "done")
    finished = [j["finished"] for j in jobs if j.get("finished")]
    outcome.result_written = max(finished) if finished else None
    deliveries = [d for j in jobs for d in j.get("deliveries", [])]
    outcome.failed_deliveries = sum(1 for d in deliveries if d["state"] != "sent")
    delivered = [d["finished"] for d in deliveries if d["state"] == "sent" and d.get("finished")]
    outcome.result_delivered = max(delivered) if delivered and not outcome.failed_deliveries else None


def check(outcome: StudyOutcome) -> None:
    """Fill in result time, split/lost series and failed jobs from the final report."""
    report = outcome.report or {"series": [], "jobs": []}
    _count_series(outcome, report)
    _count_results(outcome, _latest_jobs(report))


def wait_final(target: Target, outcome: StudyOutcome, deadline: float) -> None:
    """Wait until the engine reports the study final (or the deadline passes), then check it.

    The engine holds each request until the study is final (``wait_s``), so the
    bench costs the engine one request per study rather than a poll every few
    milliseconds; an engine that does not know the study yet is asked again
    after :data:`POLL_S`.
    """
    while (remaining := deadline - time.monotonic()) > 0:
        report = fetch_study(target, outcome.study.study_uid, wait_s=min(remaining, MAX_WAIT_S))
        if report is not None and report["final"] and report["series"]:
            outcome.report = report
            break
        if report is None:
            time.sleep(POLL_S)
    else:
        outcome.report = fetch_study(target, outcome.study.study_uid)
        log.warning("bench.study_timeout", study_key=(outcome.report or {}).get("study_key"))
    check(outcome)


def send_study(target: Target, study: Study) -> StudyOutcome:
    """C-STORE one study over one association (pynetdicom, or DCMTK storescu) and time it."""
    outcome = StudyOutcome(study, first_sent=time.time())
    if target.sender == "storescu":
        command = ["storescu", "-aet", target.calling_aet, "-aec", target.called_aet, target.host, str(target.port),
                   *map(str, study.files)]
        done = subprocess.run(command, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True)
        outcome.sent_ok = done.returncode == 0  # refused instances show up as lost series in the checks
        if not outcome.sent_ok:
            outcome.send_error = f"storescu exit {done.returncode}: {done.stderr.strip()[-300:]}"
        outcome.last_sent = time.time()
        return outcome
    try:
        report = send_files(study.files, target.host, target.port, target.called_aet, target.calling_aet)
        outcome.sent_ok = report.sent == study.instances
        if not outcome.sent_ok:
            outcome.send_error = f"{len(report.failed)} instance(s) refused: {report.failed[:3]}"
    except SendError as error:
        outcome.send_error = str(error)
    outcome.last_sent = time.time()
    return outcome


@dataclass
class Run:
    """Settings of one bench run."""

    mode: str = "closed"
    concurrency: int = 1
    rate_per_s: float | None = None
    duration_s: float | None = None
    timeout_s: float = 600.0
    seed: int = 0


def run_closed(target: Target, studies: list[Study], run: Run, progress: Callable[[], None]) -> list[StudyOutcome]:
    """``run.concurrency`` clients, each sending its next study once the previous one's results are in."""
    pending = list(reversed(studies))
    lock = threading.Lock()
    outcomes: list[StudyOutcome] = []
    stop_at = time.monotonic() + run.duration_s if run.duration_s else None

    def client() -> None:
        while True:
            with lock:
                if not pending or (stop_at is not None and time.monotonic() >= stop_at):
                    return
                study = pending.pop()
            outcome = send_study(target, study)
            if outcome.sent_ok:
                wait_final(target, outcome, time.monotonic() + run.timeout_s)
            with lock:
                outcomes.append(outcome)
            progress()

    threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(run.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def run_open(target: Target, studies: list[Study], run: Run, progress: Callable[[], None]) -> list[StudyOutcome]:
    """Studies start at Poisson arrivals of ``run.rate_per_s`` on at most ``run.concurrency`` associations."""
    if not run.rate_per_s or run.rate_per_s <= 0:
        raise ValueError("open loop needs --rate > 0 (studies per second)")
    rng = random.Random(run.seed)
    outcomes: list[StudyOutcome] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + run.duration_s if run.duration_s else None

    with ThreadPoolExecutor(run.concurrency, thread_name_prefix="bench-send") as senders, \
            ThreadPoolExecutor(max(4, run.concurrency), thread_name_prefix="bench-wait") as waiters:
        due = start
        futures = []
        for study in studies:
            due += rng.expovariate(run.rate_per_s)
            if stop_at is not None and due >= stop_at:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            sent = senders.submit(send_study, target, study)
            futures.append(waiters.submit(_finish, target, sent, run.timeout_s, outcomes, lock, progress))
        for future in futures:
            future.result()
    return outcomes


def _finish(target: Target, sent, timeout_s: float, outcomes: list[StudyOutcome], lock: threading.Lock,
            progress: Callable[[], None]) -> None:
    """Wait for a submitted send, then for the study's results; record the outcome."""
    outcome = sent.result()
    if outcome.sent_ok:
        wait_final(target, outcome, time.monotonic() + timeout_s)
    with lock:
        outcomes.append(outcome)
    progress()
