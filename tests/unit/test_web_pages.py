"""The console's pages: what each role sees, the Requeue and Resend forms, headers, no patient data in URLs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.web.audit_view import audit_page
from engine.web.timeline import timeline_svg
from tests.unit.console_factory import MR_STUDY, OPERATOR, PATIENT_ID, STUDY, VIEWER, ConsoleSetup, make_console

PAGES = ("/", "/studies", "/jobs", "/deliveries", "/workers", "/models", "/audit")


@pytest.fixture()
def setup(tmp_path: Path) -> ConsoleSetup:
    return make_console(tmp_path / "data")


def study_key(setup: ConsoleSetup, uid: str = STUDY) -> str:
    return setup.console.ledger.study_key(uid)


def test_every_page_renders_with_strict_headers_and_no_patient_data_in_links(setup: ConsoleSetup) -> None:
    client = setup.signed_in(VIEWER)
    for path in (*PAGES, f"/studies/{study_key(setup)}"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        headers = answer.headers
        assert "script-src 'self';" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
        assert headers["strict-transport-security"].startswith("max-age=")
        links = re.findall(r'(?:href|src|action)="([^"]*)"', answer.text)
        assert not [link for link in links if PATIENT_ID in link or "Doe" in link or STUDY in link], path
        assert not [link for link in links if link.startswith(("http:", "https:", "//"))], path  # nothing external


def test_the_study_page_shows_timeline_findings_preview_and_deliveries(setup: ConsoleSetup) -> None:
    page = setup.signed_in(VIEWER).get(f"/studies/{study_key(setup)}").text
    assert "Doe Jane" in page and PATIENT_ID in page
    assert page.count('<svg class="timeline" role="img"') == 1 and "<desc" in page and "infer 300 ms" in page
    assert "1 nodule" in page and "0.42" in page and "1.2, 2.5, 3.8" in page
    assert f'src="/api/jobs/{setup.jobs["done"]}/preview.png"' in page and 'alt="Preview of the model-done' in page
    assert "0xA700: out of resources" in page


def test_viewers_get_no_buttons_operators_do(setup: ConsoleSetup) -> None:
    key = study_key(setup)
    viewer, operator = setup.signed_in(VIEWER), setup.signed_in(OPERATOR)
    for path in ("/jobs", f"/studies/{key}", "/deliveries"):
        assert ">Requeue<" not in viewer.get(path).text and ">Resend<" not in viewer.get(path).text
    assert operator.get("/jobs").text.count(">Requeue<") == 2
    assert operator.get(f"/studies/{key}").text.count(">Requeue<") == 2
    assert operator.get("/deliveries").text.count(">Resend<") == 1


def test_requeue_and_resend_forms_act_and_come_back(setup: ConsoleSetup) -> None:
    operator = setup.signed_in(OPERATOR)
    key = study_key(setup)
    failed, done = setup.jobs["failed"], setup.jobs["done"]
    answer = operator.post(f"/jobs/{failed}/requeue", data={"csrf_token": operator.csrf, "next": f"/studies/{key}"},
                           follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (303, f"/studies/{key}")
    assert setup.console.ledger.job(failed).state == "queued"
    answer = operator.post(f"/deliveries/{done}/pacs/resend",
                           data={"csrf_token": operator.csrf, "next": "https://elsewhere.example/"},
                           follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (303, "/")  # never off this console
    assert [row.state for row in setup.console.ledger.deliveries([done])] == ["pending"]
    assert setup.woken == ["broker", "delivery"]
    again = operator.post(f"/jobs/{failed}/requeue", data={"csrf_token": operator.csrf})
    assert again.status_code == 409 and "only failed or dead-lettered" in again.text
    forged = operator.post(f"/jobs/{setup.jobs['dead']}/requeue", data={"csrf_token": "forged"})
    assert forged.status_code == 403 and setup.console.ledger.job(setup.jobs["dead"]).state == "dead"
    viewer = setup.signed_in(VIEWER)
    refused = viewer.post(f"/jobs/{setup.jobs['dead']}/requeue", data={"csrf_token": viewer.csrf})
    assert refused.status_code == 403 and "viewer" in refused.text
    events = [(e["event"], e["user"], e.get("outcome")) for e in setup.audit() if e["event"].startswith("console-re")]
    assert events == [("console-requeue", OPERATOR, "requeued"), ("console-resend", OPERATOR, "resent"),
                      ("console-requeue", OPERATOR, "refused")]


def test_study_list_page_filters_and_explains_bad_dates(setup: ConsoleSetup) -> None:
    client = setup.signed_in(VIEWER)
    assert f'href="/studies/{study_key(setup, MR_STUDY)}"' in client.get("/studies?modality=MR").text
    assert f'href="/studies/{study_key(setup)}"' not in client.get("/studies?modality=MR").text
    bad = client.get("/studies?received_from=yesterday")
    assert bad.status_code == 400 and "expected a date as YYYY-MM-DD" in bad.text
    assert client.get("/studies/st_000000000000").status_code == 404


def test_models_page_says_why_a_series_went_unrouted(setup: ConsoleSetup) -> None:
    page = setup.signed_in(VIEWER).get("/models").text
    assert "brain-mr" in page and "torch on cpu: test" in page and "its selector does not take it" in page


def test_timeline_bars_follow_each_other_and_are_described() -> None:
    svg = str(timeline_svg({"receive": 1.0, "queue": 0.5, "infer": 2.0, "end_to_end": 9.0}, "t<1>", "a <job>"))
    bars = [(float(x), float(w)) for x, w in re.findall(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)"', svg)]
    assert len(bars) == 3 and bars[0][0] + bars[0][1] == pytest.approx(bars[1][0], abs=0.1)
    assert bars[2][1] == pytest.approx(4 * bars[1][1], abs=0.2)  # widths in proportion to the seconds
    assert "<title id=\"t&lt;1&gt;-t\">a &lt;job&gt;</title>" in svg and "receive 1.00 s; queue 500 ms" in svg
    assert "end_to_end" not in svg and str(timeline_svg({}, "x", "y")) == ""


def test_audit_log_is_read_newest_first_across_blocks_skipping_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = [f'{{"event": "e{n % 3}", "n": {n}, "pad": "{"x" * 300}"}}' for n in range(600)]
    path.write_text("\n".join(lines) + "\n{\"torn")
    entries, more = audit_page(path, 0, 5)
    assert [e["n"] for e in entries] == [599, 598, 597, 596, 595] and more
    entries, more = audit_page(path, 197, 5, event="e0")
    assert [e["n"] for e in entries] == [6, 3, 0] and not more
    assert audit_page(tmp_path / "none.log", 0, 5) == ([], False)


def test_selectors_are_described_from_config_rules_or_docstrings() -> None:
    from types import SimpleNamespace

    from engine.config.entries import SelectorConfig
    from engine.web.models_view import describe_selector
    from plugins.nodule_seg import MIN_SLICES, takes_series

    assert describe_selector(takes_series).startswith(f"CT series of at least {MIN_SLICES} slices")
    rule = SimpleNamespace(entry=SimpleNamespace(selector=SelectorConfig(modality=["CT"], series_description="lung",
                                                                         min_slices=5)))
    assert describe_selector(rule) == "modality in ['CT']; series_description matches lung; at least 5 slice(s)"
    assert describe_selector(lambda series: True).endswith("<lambda>")  # no docstring: its name
