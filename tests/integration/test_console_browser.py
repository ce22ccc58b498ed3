"""The operations console in a real browser: Debian's chromium driven by selenium against `scanstream serve`.

A study sent by DCMTK's storescu shows up on the open study list without a
reload; its page shows the job's stage timeline and its preview; a job
dead-lettered by a failing model is requeued by an operator and succeeds
(viewers get no button and a 403); a wrong password is refused and audited;
every page is screenshotted (``SCANSTREAM_TEST_ARTIFACTS``, default a temporary
folder) and checked with axe-core (fetched by ``make test``), failing on
serious or critical violations.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from engine.testing import (
    TEST_PASSWORD,
    TEST_USER,
    EngineProcess,
    add_console_user,
    dcmtk_storescu,
    engine_process,
    make_phantom_study,
    storescu,
)
from tests.integration.conftest import PLUGIN_DIR

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
AXE = Path(__file__).resolve().parents[2] / ".cache" / "axe-core" / "axe.min.js"
WAIT_S = 180.0  # a study on a shared 2-core machine: receive, idle completion, a worker, filing
VIEWER, VIEWER_PASSWORD = "vera", "viewer test password"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1100")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SCANSTREAM_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts")) / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    if dcmtk_storescu() is None:
        pytest.fail("DCMTK storescu is not installed; `make test` installs it (apt-get install dcmtk)")
    folder = tmp_path_factory.mktemp("console-engine")
    flag = folder / "fail-now"
    process = engine_process(folder / "engine", plugin_modules=["flaky_model"], plugin_paths=[PLUGIN_DIR],
                             models=["flaky-test"], config={"broker": {"max_attempts": 1}},
                             env={"FLAKY_MODEL_FLAG": str(flag)}, idle_timeout_s=2.0)
    process.flag = flag  # type: ignore[attr-defined]
    with process:
        add_console_user(process.data_dir, VIEWER, "viewer", VIEWER_PASSWORD)
        yield process


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; `make test` installs it (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # a live part swapped in meanwhile leaves stale elements: look again
        return WebDriverWait(driver, timeout, poll_frequency=0.25,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError(f"not seen within {timeout} s: {what}\n{driver.current_url}") from None


def sign_in(driver: Any, engine: EngineProcess, user: str, password: str, path: str = "/") -> None:
    """Sign in with the keyboard only: type the name, Tab to the password, Enter to submit."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{engine.http_url}/login?next={path}")
    name = driver.find_element(By.ID, "username")
    assert driver.switch_to.active_element == name  # the form has the focus from the start
    name.send_keys(user, Keys.TAB)
    driver.switch_to.active_element.send_keys(password, Keys.ENTER)


def click(element: Any) -> bool:
    element.click()
    return True


def shoot(driver: Any, artifacts: Path, name: str) -> None:
    driver.save_screenshot(str(artifacts / f"{name}.png"))


def axe_violations(driver: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the current page."""
    driver.execute_script(AXE.read_text())
    violations = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(result => done(result.violations), error => done([{id: 'axe-error', impact: 'critical',"
        " help: String(error), nodes: []}]));")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "where": [node.get("target") for node in v["nodes"]][:5]}
            for v in violations if v["impact"] in ("serious", "critical")]


def send_study(engine: EngineProcess, folder: Path, seed: int) -> str:
    study = make_phantom_study(folder, seed=seed, slices=6, size=64, nodules=0)
    sent = storescu(study.files, engine.port, engine.ae_title, "CONSOLE_CT", executable=dcmtk_storescu() or "")
    assert sent.returncode == 0, sent.stderr
    ledger = engine.ledger()  # every instance is in the ledger once storescu has its responses
    try:
        return ledger.study_key(study.study_uid)
    finally:
        ledger.close()


def test_a_wrong_password_is_refused_and_audited(engine: EngineProcess, browser: Any, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, engine, TEST_USER, "not the password")
    message = browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    assert message == "Wrong user name or password." and browser.current_url.endswith("/login")
    shoot(browser, artifacts, "login-refused")
    lines = [json.loads(line) for line in (engine.data_dir / "audit.log").read_text().splitlines()]
    assert {"event": "console-login-failed", "user": TEST_USER, "address": "127.0.0.1"}.items() <= lines[-1].items()
    assert "not the password" not in (engine.data_dir / "audit.log").read_text() + engine.log_tail(400)


def test_a_study_appears_without_reload_and_shows_its_timeline_and_preview(engine: EngineProcess, browser: Any,
                                                                          artifacts: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, engine, TEST_USER, TEST_PASSWORD, "/studies")
    wait_for(browser, lambda d: d.current_url.endswith("/studies"), "the study list after signing in")
    browser.execute_script("window.stillTheSamePage = true;")
    key = send_study(engine, tmp_path / "study", seed=501)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"tr[data-study='{key}']"),
             "the new study's row on the open list")
    assert browser.execute_script("return window.stillTheSamePage === true;"), "the page was reloaded"
    wait_for(browser, lambda d: "done" in d.find_element(By.CSS_SELECTOR, f"tr[data-study='{key}']").text,
             "the study's state turning done on the list")
    shoot(browser, artifacts, "studies")
    wait_for(browser, lambda d: click(d.find_element(By.CSS_SELECTOR, f"a[href='/studies/{key}']")),
             "the study's link clicked")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "svg.timeline"), "the job's stage timeline")
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect")
    assert len(bars) >= 5  # receive, assemble, queue, the worker's stages, transfer
    preview = browser.find_element(By.CSS_SELECTOR, "figure.preview img")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth;",
                                                  preview), "the preview image loaded")
    assert "flaky test model: 6 slices" in browser.page_source
    shoot(browser, artifacts, "study")


def test_a_dead_job_is_requeued_by_an_operator_only_and_succeeds(engine: EngineProcess, browser: Any,
                                                                 artifacts: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    engine.flag.write_text("fail")  # type: ignore[attr-defined]
    key = send_study(engine, tmp_path / "study", seed=502)
    job_id = wait_for(browser, lambda d: dead_job(engine, key), "the job dead-lettered")

    sign_in(browser, engine, VIEWER, VIEWER_PASSWORD, "/jobs")
    wait_for(browser, lambda d: d.find_elements(By.ID, f"row-{job_id}"), "the dead job on the viewer's jobs page")
    assert not browser.find_elements(By.CSS_SELECTOR, f"button[aria-label='Requeue job {job_id}']")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const csrf = document.querySelector('input[name=csrf_token]').value;"
        "fetch('/api/jobs/' + arguments[0] + '/requeue', {method: 'POST', headers: {'X-CSRF-Token': csrf}})"
        ".then(r => done(r.status), e => done(String(e)));", job_id)
    assert status == 403 and engine_job(engine, job_id)["state"] == "dead"
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait_for(browser, lambda d: d.current_url.endswith("/login") and d.find_elements(By.ID, "username"),
             "the sign-in page after signing out")  # before the next sign-in, which the late redirect would undo

    sign_in(browser, engine, TEST_USER, TEST_PASSWORD, f"/studies/{key}")
    engine.flag.unlink()  # type: ignore[attr-defined]
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"button[aria-label='Requeue job {job_id}']"),
             "the operator's Requeue button")
    shoot(browser, artifacts, "study-dead-job")
    browser.execute_script("window.beforeRequeue = true;")
    wait_for(browser, lambda d: click(d.find_element(By.CSS_SELECTOR, f"button[aria-label='Requeue job {job_id}']")),
             "the Requeue button clicked")
    wait_for(browser, lambda d: d.current_url.endswith(f"/studies/{key}") and d.execute_script(
        "return window.beforeRequeue === undefined && document.readyState === 'complete';"),
        "the study page loaded again after the Requeue form's redirect")
    browser.execute_script("window.stillTheSamePage = true;")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#job-{job_id} .state-done"),
             "the requeued job done, shown without a reload")
    assert browser.execute_script("return window.stillTheSamePage === true;")
    requeues = [json.loads(line) for line in (engine.data_dir / "audit.log").read_text().splitlines()
                if '"console-requeue"' in line]
    assert [(e["user"], e["job"], e["outcome"]) for e in requeues] == [(TEST_USER, job_id, "requeued")]


def dead_job(engine: EngineProcess, study_key: str) -> str | None:
    jobs = engine.api_json(f"/api/studies/{study_key}")["jobs"]
    return jobs[0]["job_id"] if jobs and jobs[0]["state"] == "dead" else None


def engine_job(engine: EngineProcess, job_id: str) -> dict[str, Any]:
    return next(job for job in engine.api_json("/api/jobs?limit=200")["items"] if job["job_id"] == job_id)


def test_every_page_is_screenshotted_and_has_no_serious_accessibility_violation(engine: EngineProcess, browser: Any,
                                                                               artifacts: Path) -> None:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing; `make test` fetches axe-core from the npm registry (npm pack)")
    from selenium.webdriver.common.by import By

    browser.get(f"{engine.http_url}/login")
    found = {"login": axe_violations(browser)}
    shoot(browser, artifacts, "login")
    sign_in(browser, engine, TEST_USER, TEST_PASSWORD)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "ul.tiles"), "the dashboard")
    studies = engine.api_json("/api/studies")["items"]
    pages = {"dashboard": "/", "studies": "/studies", "jobs": "/jobs", "deliveries": "/deliveries",
             "workers": "/workers", "models": "/models", "audit": "/audit"}
    if studies:
        pages["study"] = f"/studies/{studies[0]['study_key']}"
    for name, path in pages.items():
        browser.get(f"{engine.http_url}{path}")
        found[name] = axe_violations(browser)
        shoot(browser, artifacts, f"page-{name}")
    browser.get(f"{engine.http_url}/api/docs")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"), "the API docs rendered")
    shoot(browser, artifacts, "page-api-docs")
    (artifacts / "axe.json").write_text(json.dumps(found, indent=2))
    assert not {name: problems for name, problems in found.items() if problems}, json.dumps(found, indent=2)
    assert sorted(path.name for path in artifacts.glob("page-*.png")) == sorted(
        f"page-{name}.png" for name in [*pages, "api-docs"])
