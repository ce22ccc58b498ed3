"""The console's JSON API: lists with filters and paging, a study with previews, docs, events, models, workers."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from PIL import Image

from engine.broker.broker import WorkerSnapshot
from engine.web.api.events import ledger_changes
from tests.unit.console_factory import ACCESSION, MR_STUDY, PATIENT_ID, STUDY, ConsoleSetup, make_console

WORKER = WorkerSnapshot("gpu-host:4242:0", "gpu-host", 4242, ("model-done",), 1, 1, time.time() - 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> ConsoleSetup:
    return make_console(tmp_path_factory.mktemp("console") / "data", workers=(WORKER,))


@pytest.fixture(scope="module")
def api(setup: ConsoleSetup):
    client = setup.client()
    client.headers["Authorization"] = f"Bearer {setup.tokens['viktor']}"
    return client


def test_study_list_filters_and_pages(api) -> None:
    everything = api.get("/api/studies").json()
    assert everything["total"] == 2 and [s["study_uid"] for s in everything["items"]] == [MR_STUDY, STUDY]
    ct = everything["items"][1]
    assert (ct["state"], ct["modalities"], ct["calling_aes"], ct["jobs"], ct["instances"]) == \
        ("failed", ["CT"], ["CT_SCANNER"], 3, 1)
    assert (ct["patient_id"], ct["accession_number"], ct["study_date"]) == (PATIENT_ID, ACCESSION, "2024-01-31")
    assert everything["items"][0]["state"] == "stored"

    def uids(**query) -> list[str]:
        return [s["study_uid"] for s in api.get("/api/studies", params=query).json()["items"]]

    assert uids(modality="CT") == [STUDY] and uids(calling_ae="MR_SCANNER") == [MR_STUDY]
    assert uids(state="failed") == [STUDY] and uids(state="done") == []
    assert uids(accession=ACCESSION) == [STUDY] and uids(accession="ACC-99") == [MR_STUDY]
    today, yesterday = date.today(), date.today() - timedelta(days=1)
    assert uids(received_from=str(today)) == [MR_STUDY, STUDY] and uids(received_to=str(yesterday)) == []
    page = api.get("/api/studies", params={"offset": 1, "limit": 1}).json()
    assert (page["total"], page["offset"], page["limit"], [s["study_uid"] for s in page["items"]]) == \
        (2, 1, 1, [STUDY])


@pytest.mark.parametrize("query", ["state=lost", "limit=0", "limit=201", "offset=-1", "received_from=31.01.2024"])
def test_bad_list_parameters_get_400_naming_them(api, query: str) -> None:
    answer = api.get(f"/api/studies?{query}")
    assert answer.status_code == 400 and query.split("=")[0] in answer.json()["error"]


def test_one_study_by_uid_or_key_with_previews(api, setup: ConsoleSetup) -> None:
    report = api.get(f"/api/studies/{STUDY}").json()
    key = report["study_key"]
    assert api.get(f"/api/studies/{key}").json()["study_uid"] == STUDY
    assert report["header"]["patient_id"] == PATIENT_ID and report["series"][0]["modality"] == "CT"
    jobs = {job["model"]: job for job in report["jobs"]}
    assert set(jobs) == {"model-done", "model-failed", "model-dead"}
    done = jobs["model-done"]
    assert done["stages_s"]["infer"] == pytest.approx(0.3) and {"result.json", "preview.dcm"} <= set(done["artifacts"])
    assert done["deliveries"][0]["state"] == "failed"
    assert report["previews"] == [{"job_id": setup.jobs["done"], "model": "model-done", "url": done["preview_url"]}]
    assert jobs["model-failed"]["preview_url"] is None
    png = api.get(done["preview_url"])
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (60, 40) and image.getpixel((15, 15)) == (230, 20, 20)
    assert api.get(f"/api/jobs/{setup.jobs['failed']}/preview.png").status_code == 404
    assert api.get("/api/studies/9.9").status_code == 404 and api.get("/api/studies/st_000000000000").status_code == 404


def test_wait_s_is_one_number_from_0_to_60(api) -> None:
    assert api.get(f"/api/studies/{STUDY}?wait_s=2.5").status_code == 200
    for bad in ("-1", "61", "nan", "soon", "1&wait_s=2"):
        answer = api.get(f"/api/studies/{STUDY}?wait_s={bad}")
        assert answer.status_code == 400 and answer.json() == {"error": "wait_s: expected seconds from 0 to 60"}


def test_jobs_and_deliveries_filter_and_page(api, setup: ConsoleSetup) -> None:
    jobs = api.get("/api/jobs").json()
    assert jobs["total"] == 3 and {job["state"] for job in jobs["items"]} == {"done", "failed", "dead"}
    assert [j["job_id"] for j in api.get("/api/jobs?state=dead").json()["items"]] == [setup.jobs["dead"]]
    assert [j["model"] for j in api.get("/api/jobs", params={"reason": "FAILED ON"}).json()["items"]] == \
        ["model-failed"]
    assert api.get("/api/jobs", params={"reason": "%"}).json()["total"] == 0  # LIKE characters are literal
    assert api.get("/api/jobs?model=model-done&limit=1").json()["items"][0]["study_key"].startswith("st_")
    deliveries = api.get("/api/deliveries?state=failed").json()
    assert [(d["job_id"], d["destination"], d["reason"]) for d in deliveries["items"]] == \
        [(setup.jobs["done"], "pacs", "0xA700: out of resources")]
    assert api.get("/api/deliveries?destination=elsewhere").json()["total"] == 0


def test_workers_models_summary_and_audit(api, setup: ConsoleSetup) -> None:
    (worker,) = api.get("/api/workers").json()
    assert (worker["host"], worker["models"], worker["in_flight"]) == ("gpu-host", ["model-done"], 1)
    assert worker["seen_s_ago"] >= 2.0  # heard 2 s before the module was loaded
    models = api.get("/api/models").json()
    (model,) = models["models"]
    assert (model["name"], model["backend"], model["routed"]) == ("brain-mr", "torch on cpu: test", True)
    assert model["selector"] == "MR series of the brain (a selector that takes nothing here)."
    (unrouted,) = models["unrouted"]
    assert unrouted["modality"] == "MR" and unrouted["reasons"] == [
        "brain-mr: its selector does not take it (MR series of the brain (a selector that takes nothing here).)"]
    summary = api.get("/api/summary").json()
    assert (summary["received_today"], summary["failed"], summary["dead_lettered"], summary["workers"]) == \
        ({"studies": 2, "instances": 2}, 1, 1, 1)
    assert summary["latency_s"]["model-done"]["infer"]["p50"] == pytest.approx(0.3)
    for index in range(5):
        setup.console.record("console-test", "olga", "127.0.0.1", n=index)
    page = api.get("/api/audit?event=console-test&limit=2&offset=1").json()
    assert [e["n"] for e in page["items"]] == [3, 2] and page["more"]


def test_openapi_document_and_docs_served_without_a_cdn(api, setup: ConsoleSetup) -> None:
    document = api.get("/api/openapi.json").json()
    assert {"/api/studies", "/api/studies/{ref}", "/api/jobs", "/api/jobs/{job_id}/requeue", "/api/deliveries",
            "/api/workers", "/api/models", "/api/audit", "/metrics", "/healthz", "/readyz"} <= set(document["paths"])
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    browser = setup.signed_in("viktor")
    docs = browser.get("/api/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "https://" not in docs and "http://" not in docs
    assert browser.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_events_announce_ledger_changes(setup: ConsoleSetup) -> None:
    stopping = threading.Event()

    async def first_events() -> list[str]:
        stream = ledger_changes(setup.console.reader, stopping)
        seen = [await anext(stream)]
        setup.console.ledger.record_delivery(setup.jobs["done"], "pacs", "failed", time.time(), reason="again")
        seen.append(await asyncio.wait_for(anext(stream), timeout=30))
        stopping.set()
        seen.extend([event async for event in stream])
        return seen

    events = asyncio.run(first_events())
    assert events[0].startswith("retry:") and "\nevent: ready\ndata: " in events[0] and events[1].startswith("event: change\ndata: ") and len(events) == 2


def test_the_openapi_document_needs_sign_in(setup: ConsoleSetup) -> None:
    assert json.loads(setup.client().get("/api/openapi.json").text)["error"].startswith("sign in")


def test_the_bench_reads_the_study_with_a_token_and_says_how_to_get_one(setup: ConsoleSetup) -> None:
    from engine.bench.driver import Target, fetch_study
    from engine.config import ConfigError
    from engine.web.server import WebServer

    server = WebServer(setup.app, "127.0.0.1", 0)
    server.start()
    try:
        target = Target("127.0.0.1", 0, "SCANSTREAM", f"http://127.0.0.1:{server.port}")
        with pytest.raises(ConfigError, match="--api-token or SCANSTREAM_API_TOKEN"):
            fetch_study(target, STUDY)
        signed = Target("127.0.0.1", 0, "SCANSTREAM", target.http_url, api_token=setup.tokens["viktor"])
        assert fetch_study(signed, STUDY, wait_s=0.5)["study_uid"] == STUDY
        assert fetch_study(signed, "9.9") is None
    finally:
        server.stop()
