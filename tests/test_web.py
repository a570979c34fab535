"""The web UI in a real headless Chromium, against the API under real gunicorn with API keys on, a real
Redis and a real worker: enter the key, upload a model and a dataset made here, submit, watch the
progress, see the curve, the report and the downloads, the list's thumbnail, the compare page, delete.
API errors appear next to the field they name. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from browser import chrome, console_errors, require_browser, screenshot, text, wait_for

from app.client import ApiError, Client
from app.redis_server import free_port
from conftest import start_api, stop_process

KEY = "web-ui-test-key-5f0c2e9a"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
BUDGETS = "0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15"


@pytest.fixture(scope="module")
def server(redis_server, appdata, worker):
    port = free_port()
    proc = start_api(redis_server.url, appdata, port, API_KEYS=f"alice:{KEY}", TEST_KEY=KEY)
    url = f"http://127.0.0.1:{port}"
    yield SimpleNamespace(url=url, client=Client(url, api_key=KEY, timeout=60))
    stop_process(proc)


@pytest.fixture
def driver(tmp_path):
    require_browser()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = chrome(tmp_path / "profile", downloads)
    browser.downloads = downloads
    yield browser
    browser.quit()


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def with_key(driver, server, path: str) -> None:
    """Open ``path`` with the key already in this tab's session (as after entering it once)."""
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.setItem('secev-api-key', arguments[0])", KEY)
    driver.get(server.url + path)


def fill(driver, selector: str, value: str) -> None:
    field = css(driver, selector)[0]
    field.clear()
    field.send_keys(value)


def choose(driver, selector: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(css(driver, selector)[0]).select_by_value(value)


def downloaded(driver, suffix: str) -> bytes:
    path = wait_for(lambda: [p for p in driver.downloads.iterdir() if p.name.endswith(suffix)], 30, f"a {suffix} download")[0]
    return path.read_bytes()


def endpoint_exists(server, path: str) -> bool:
    """Whether the service has an endpoint another branch adds (report, CSV, plots): a missing route is a
    plain 404 "Not Found", a missing object names itself."""
    try:
        server.client.send("GET", path)
        return True
    except ApiError as exc:
        return not (exc.status in (404, 405) and isinstance(exc.body, dict) and exc.body.get("error") == "Not Found")


def progress_numbers(seen: list[str]) -> list[tuple[int, int]]:
    return [(int(m[1]), int(m[2])) for s in seen if (m := re.match(r"(\d+) / (\d+)", s))]


def test_whole_path_key_upload_submit_progress_curve_report_list_compare_delete(server, driver, assets):
    d = driver
    # The key: asked for once, kept for the tab's session, never in a URL.
    d.get(server.url + "/")
    wait_for(lambda: css(d, "#key-message")[0].is_displayed(), 30, "the API key prompt")
    assert "API key" in text(d, "#key-message")
    css(d, "#api-key")[0].send_keys(KEY)
    css(d, "#key-use")[0].click()
    wait_for(lambda: text(d, "#key-state") == "API key set for this tab", 30, "the key to be taken")
    assert not css(d, "#key-message")[0].is_displayed()
    d.get(server.url + "/new")
    assert d.execute_script("return sessionStorage.getItem('secev-api-key')") == KEY

    # Upload a model and a dataset made by the tests, through the form's file inputs.
    wait_for(lambda: len(css(d, "#attack option")) >= 4, 30, "the attacks")
    css(d, "#model-file")[0].send_keys(str(assets.model))
    wait_for(lambda: "ready" in text(d, "#model-upload-state"), 240, "the model's verification")
    css(d, "#dataset-file")[0].send_keys(str(assets.dataset))
    wait_for(lambda: "ready" in text(d, "#dataset-upload-state"), 60, "the dataset's check")
    assert css(d, "#trained-model option:checked")[0].text.startswith("cnn.onnx (ready")
    assert css(d, "#dataset option:checked")[0].text.startswith("val.h5 (ready, 120 samples")

    # A PGD evaluation long enough to be watched.
    choose(d, "#attack", "pgd")
    fill(d, "#perturbation-values", BUDGETS)
    choose(d, "#preprocessing", "none")
    fill(d, "#param-steps", "40")
    css(d, "#submit")[0].click()
    job_id = wait_for(lambda: re.search(f"/evaluations/({UUID})$", d.current_url), 30, "the evaluation page")[1]
    assert KEY not in d.current_url

    seen: list[str] = []
    shot = []

    def ended() -> bool:
        seen.append(text(d, "#job-progress-text"))
        status = text(d, "#job-status")
        if status == "started" and not shot and any(0 < a < b for a, b in progress_numbers(seen[-1:])):
            shot.append(screenshot(d, "evaluation-running", full=False))
        return status in ("finished", "failed", "canceled")

    wait_for(ended, 600, "the evaluation to end", poll=0.2)
    assert text(d, "#job-status") == "finished", text(d, "#job-error")
    numbers = progress_numbers(seen)
    assert any(0 < done < total for done, total in numbers), f"no progress seen while it ran: {sorted(set(seen))}"
    assert len({done for done, _ in numbers}) >= 2

    # The curve, drawn from the output's own numbers; the figures; downloads enabled.
    output = server.client.output(job_id)
    series = wait_for(lambda: css(d, "#curve svg polyline.series"), 30, "the curve")
    assert len(series[0].get_attribute("points").split()) == len(output["sec-curve"]["x-values"]) == 7
    assert f"{output['clean-accuracy'] * 100:.1f}%" in text(d, "#headline")
    for kind in ("json", "csv", "png", "svg"):
        assert css(d, f"[data-download={kind}]")[0].is_enabled()
    css(d, "[data-download=json]")[0].click()
    assert json.loads(downloaded(d, "-evaluation.json")) == output

    css(d, "[data-download=csv]")[0].click()
    if endpoint_exists(server, f"/api/security_evaluations/{job_id}/output/csv"):
        csv = downloaded(d, "-evaluation.csv").decode()
        assert len(csv.strip().splitlines()) == 1 + 7
    else:
        wait_for(lambda: "cannot give the CSV" in text(d, "#download-message"), 30, "the missing-CSV message")

    # The report, fetched with the key into a sandboxed iframe (or a clear message without the endpoint).
    if endpoint_exists(server, f"/api/security_evaluations/{job_id}/report"):
        frame = wait_for(lambda: [f for f in css(d, "#report") if f.is_displayed()], 60, "the report")[0]
        d.switch_to.frame(frame)
        assert "accuracy" in d.find_element("tag name", "body").text.lower()
        d.switch_to.default_content()
    else:
        wait_for(lambda: "no report yet" in text(d, "#report-message"), 30, "the missing-report message")
    docs_shot = screenshot(d, "evaluation-finished")

    # The list: the job with its thumbnail curve, names resolved without a request per row.
    second = server.client.submit(
        {"trained-model": output["model"]["id"], "dataset": output["dataset"]["id"], "attack": "fgsm",
         "evaluation-mode": "fast", "perturbation-values": [0, 0.05, 0.1, 0.15], "preprocessing": {}}
    )["job_id"]
    server.client.wait(second, timeout=300)
    d.get(server.url + "/")
    row = wait_for(lambda: css(d, f"tr[data-job='{job_id}'] svg.thumb polyline"), 30, "the thumbnail")
    assert len(row[0].get_attribute("points").split()) == 7
    line = css(d, f"tr[data-job='{job_id}']")[0].text
    assert "cnn.onnx" in line and "val.h5" in line and "finished" in line
    assert css(d, f"tr[data-job='{second}'] svg.thumb polyline")
    listed = {e["job_id"]: e for e in server.client.json("GET", "/api/security_evaluations?include=summary")["evaluations"]}
    assert listed[job_id]["summary"]["sec-curve"] == output["sec-curve"]
    screenshot(d, "list")

    # Compare: pick both on the list, one plot and one table.
    for job in (job_id, second):
        css(d, f"tr[data-job='{job}'] input.pick")[0].click()
    css(d, "#compare-selected")[0].click()
    wait_for(lambda: len(css(d, "#compare-curve svg polyline.series")) == 2, 30, "two curves")
    assert set(d.current_url.split("jobs=")[1].split(",")) == {job_id, second}
    assert len(css(d, "#compare-rows tbody tr")) == 2
    screenshot(d, "compare")
    css(d, "#compare-png")[0].click()
    if endpoint_exists(server, f"/api/plots?jobs={job_id},{second}"):
        assert downloaded(d, "comparison.png").startswith(b"\x89PNG\r\n")
    else:
        wait_for(lambda: "no combined plot" in text(d, "#compare-message"), 30, "the missing-plots message")
    # With no ids in the URL, the page offers the finished evaluations to pick from.
    d.get(server.url + "/compare")
    for box in wait_for(lambda: len(css(d, "#choices input")) == 2 and css(d, "#choices input"), 30, "the picker"):
        box.click()
    css(d, "#compare-go")[0].click()
    wait_for(lambda: len(css(d, "#compare-curve svg polyline.series")) == 2, 30, "two curves from the picker")

    # Delete from the evaluation page (two clicks), back on the list, gone from the API.
    d.get(f"{server.url}/evaluations/{job_id}")
    wait_for(lambda: text(d, "#job-status") == "finished", 30, "the page")
    css(d, "#delete")[0].click()
    assert "Really delete" in text(d, "#delete")
    css(d, "#delete")[0].click()
    wait_for(lambda: d.current_url.rstrip("/") == server.url, 30, "the list after delete")
    with pytest.raises(ApiError) as gone:
        server.client.status(job_id)
    assert gone.value.status == 404

    # Bulk delete from the list (two clicks), where the service has it.
    wait_for(lambda: css(d, f"tr[data-job='{second}']"), 30, "the list")
    choose(d, "#bulk-status", "finished")
    css(d, "#bulk-delete")[0].click()
    css(d, "#bulk-delete")[0].click()
    if endpoint_exists(server, "/api/attacks"):  # the same branch adds the bulk delete
        wait_for(lambda: "Deleted 1 finished" in text(d, "#list-message"), 30, "the bulk delete")
        assert not css(d, f"tr[data-job='{second}']")
        assert server.client.json("GET", "/api/security_evaluations")["count"] == 0
    else:
        wait_for(lambda: "no bulk delete" in text(d, "#list-message"), 30, "the missing-endpoint message")
    assert console_errors(d) == []
    assert docs_shot.is_file()


def test_api_errors_appear_next_to_the_field_they_name(server, driver, assets, tmp_path):
    d = driver
    model = server.client.upload("models", assets.model)
    dataset = server.client.upload("datasets", assets.dataset)
    with_key(d, server, "/new")
    wait_for(lambda: css(d, f"#trained-model option[value='{model['id']}']"), 30, "the uploaded models")
    wait_for(lambda: len(css(d, "#attack option")) >= 4, 30, "the attacks")

    def submit_and_read(field: str) -> str:
        css(d, "#submit")[0].click()
        return wait_for(lambda: text(d, f"[data-error-for='{field}']"), 30, f"the error next to {field}")

    assert "trained-model: required" in submit_and_read("trained-model")
    choose(d, "#trained-model", model["id"])
    choose(d, "#dataset", dataset["id"])
    choose(d, "#preprocessing", "none")
    fill(d, "#perturbation-values", "0, 0.05, 2")
    assert "must lie in [0, 1]" in submit_and_read("perturbation-values")
    assert css(d, "#perturbation-values")[0].get_attribute("aria-invalid") == "true"
    assert "see the field" in text(d, "#form-message")
    assert text(d, "[data-error-for='trained-model']") == ""  # the previous error is cleared

    fill(d, "#perturbation-values", "0, 0.05")
    fill(d, "#param-steps", "0")
    assert "attack-params.steps: must be between 1" in submit_and_read("attack-params.steps")

    # Whatever comes back is text, never markup: a value echoed in an error cannot add an element.
    fill(d, "#param-steps", "50")
    fill(d, "#perturbation-values", "<b/id=pwned>bold</b>")
    assert "<b/id=pwned>bold</b>" in submit_and_read("perturbation-values")
    assert css(d, "#pwned") == []
    screenshot(d, "form-error")

    # Upload errors appear next to their file input: a wrong suffix, then a file that is no ONNX.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    css(d, "#model-file")[0].send_keys(str(notes))
    assert "must end in .onnx" in wait_for(lambda: text(d, "[data-error-for='model-file']"), 30, "the suffix error")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 100)
    css(d, "#model-file")[0].send_keys(str(junk))
    refused = wait_for(lambda: (t := text(d, "[data-error-for='model-file']")) and "must end" not in t and t, 60, "the refusal")
    assert "junk.onnx" in refused or "ONNX" in refused or "onnx" in refused, refused
    assert console_errors(d) == []


def test_pages_need_no_key_carry_a_csp_and_escape_the_url(settings):
    from app import create_app

    client = create_app({**settings, "api_keys": {KEY: "alice"}}).test_client()
    for path in ("/", "/new", "/compare", "/evaluations/x"):
        page = client.get(path)
        assert page.status_code == 200 and page.mimetype == "text/html", path
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-eval" not in policy and "frame-ancestors 'none'" in policy
    script = client.get("/web/static/common.js")
    assert script.status_code == 200 and "X-API-Key" in script.get_data(as_text=True)
    assert client.get("/api/security_evaluations").status_code == 401  # the data still needs the key
    hostile = client.get("/evaluations/%22%3E%3Cscript%3Ealert(1)").get_data(as_text=True)
    assert "<script>alert(1)" not in hostile and "&#34;&gt;&lt;script&gt;alert(1)" in hostile
    assert client.get("/nothing-here").get_json()["error"] == "Not Found"


def test_list_summary_gives_finished_curves_in_one_request(app, client):
    """The list's thumbnails come from ``include=summary``: each finished evaluation's curve and headline,
    nothing for the others, kept on the next page's link; anything else in ``include`` is a 400."""
    records = app.extensions["secev"]["records"]
    request = {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", "attack": "pgd", "norm": "linf"}
    curve = {"x-values": [0.0, 0.1], "y-values": [0.9, 0.4]}
    done = records.create_evaluation(request, "public", {})
    records.set_status(done, "finished", result={"sec-curve": curve, "sec-value": 0.6, "sec-level": "medium",
                                                 "clean-accuracy": 0.9, "attack": {"repr": "x" * 5000}})
    queued = records.create_evaluation(request, "public", {})
    plain = client.get("/api/security_evaluations").get_json()["evaluations"]
    assert all("summary" not in e for e in plain)  # opt-in: the plain list is unchanged
    first = client.get("/api/security_evaluations?include=summary&limit=1").get_json()
    headline = {"sec-curve": curve, "clean-accuracy": 0.9, "sec-value": 0.6, "sec-level": "medium"}
    assert first["evaluations"][0]["summary"] == headline
    assert "include=summary" in first["links"]["next"]
    second = client.get(first["links"]["next"]).get_json()["evaluations"]
    assert second[0]["job_id"] == queued and "summary" not in second[0]
    bad = client.get("/api/security_evaluations?include=everything")
    assert bad.status_code == 400 and bad.get_json()["details"]["field"] == "include"
