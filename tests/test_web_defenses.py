"""Defended evaluations in the web UI (issue 12), in a real headless Chromium against real gunicorn, Redis and
a worker: the form's Defenses rows (added, removed, capped at the listing's max-defenses, their order the
request's), an API error next to the row's field that caused it, and the evaluation page's two curves, its
defense facts and the per-epsilon table's undefended column, checked against the API's own output; then the
list row naming the defenses and the compare page with both curves."""

from __future__ import annotations

import re

from browser import console_errors, screenshot, text, wait_for
from test_web import UUID, choose, css, driver, fill, server, with_key  # noqa: F401  (fixtures: server, driver)


def count(server) -> int:  # noqa: F811
    return server.client.json("GET", "/api/security_evaluations")["count"]


def rows(d) -> list:
    return css(d, "#defense-rows .defense-row")


def add_defense(d, name: str) -> int:
    """Click *Add a defense* and pick ``name`` in the new (last) row; returns its position."""
    before = len(rows(d))
    css(d, "#defense-add")[0].click()
    wait_for(lambda: len(rows(d)) == before + 1, 10, "a new defense row")
    choose(d, f"select[name='defenses[{before}].name']", name)
    return before


def test_defended_evaluation_from_the_form_shows_both_curves_the_defenses_and_the_undefended_column(server, driver, assets):  # noqa: F811
    d = driver
    model = server.client.upload("models", assets.model)
    dataset = server.client.upload("datasets", assets.dataset)
    with_key(d, server, "/new")
    wait_for(lambda: css(d, f"#trained-model option[value='{model['id']}']"), 30, "the uploaded models")
    wait_for(lambda: css(d, "#defenses-fieldset")[0].is_displayed(), 30, "the Defenses fieldset")
    choose(d, "#trained-model", model["id"])
    choose(d, "#dataset", dataset["id"])
    choose(d, "#preprocessing", "none")
    choose(d, "#attack", "fgsm")
    fill(d, "#perturbation-values", "0.1, 0.2")
    css(d, "input[name=evaluation-mode][value=fast]")[0].click()
    assert not css(d, "#defense-options")[0].is_displayed()  # no defense chosen: no defense-params either

    # Two stages in order; each row shows its defense's parameters with the listed defaults.
    add_defense(d, "bit-depth")
    assert css(d, "[name='defenses[0].bits']")[0].get_attribute("value") == "4"
    fill(d, "[name='defenses[0].bits']", "4")
    add_defense(d, "spatial-smoothing")
    assert "Deterministic" in css(d, ".defense-row .defense-info")[1].text
    assert css(d, "#defense-options")[0].is_displayed()
    assert "not used" in text(d, "#defense-random-note")  # neither is random: the draws do not matter

    # Up to the listing's max-defenses (4): then the button is off; a random stage changes the hint; removed rows go.
    listing = server.client.json("GET", "/api/attacks")["defenses"]
    while len(rows(d)) < listing["max-defenses"]:
        add_defense(d, "gaussian-noise")
    assert not css(d, "#defense-add")[0].is_enabled()
    assert "gaussian-noise" in text(d, "#defense-random-note") and "apply to the random" in text(d, "#defense-random-note")
    assert "Random" in css(d, ".defense-row .defense-info")[3].text
    while len(rows(d)) > 2:
        css(d, ".defense-row:last-child .defense-remove")[0].click()
    assert css(d, "#defense-add")[0].is_enabled()
    assert [e.get_attribute("value") for e in css(d, "select.defense-name")] == ["bit-depth", "spatial-smoothing"]

    # Moving a row renames its fields after its new position (errors name stages by position), values kept.
    css(d, ".defense-row:nth-child(2) .defense-up")[0].click()
    assert [e.get_attribute("value") for e in css(d, "select.defense-name")] == ["spatial-smoothing", "bit-depth"]
    assert css(d, "[name='defenses[0].window']") and css(d, "[data-error-for='defenses[1].bits']")
    assert [e.text for e in css(d, ".defense-label")] == ["Defense 1", "Defense 2"]
    css(d, ".defense-row:nth-child(2) .defense-up")[0].click()
    assert css(d, "[name='defenses[0].bits']")[0].get_attribute("value") == "4"

    # A hostile window: the API's 400 appears next to the second row's window, and no job is made.
    jobs = count(server)
    fill(d, "[name='defenses[1].window']", "4")
    screenshot(d, "form-defenses", full=True)
    css(d, "#submit")[0].click()
    error = wait_for(lambda: text(d, "[data-error-for='defenses[1].window']"), 30, "the error next to the window")
    assert "defenses[1].window: must be odd" in error
    assert css(d, "[name='defenses[1].window']")[0].get_attribute("aria-invalid") == "true"
    assert text(d, "[data-error-for='defenses[0].bits']") == ""
    assert "see the field" in text(d, "#form-message")
    assert count(server) == jobs and re.search(r"/new$", d.current_url)
    screenshot(d, "form-defenses-error")

    fill(d, "[name='defenses[1].window']", "3")
    css(d, "#submit")[0].click()
    job_id = wait_for(lambda: re.search(f"/evaluations/({UUID})$", d.current_url), 30, "the evaluation page")[1]
    wait_for(lambda: text(d, "#job-status") in ("finished", "failed", "canceled"), 120, "the evaluation to end", poll=0.2)
    assert text(d, "#job-status") == "finished", text(d, "#job-error")
    output = server.client.output(job_id)
    stages = ["bit-depth (bits 4)", "spatial-smoothing (window 3)"]
    assert [(s["name"], s.get("bits"), s.get("window")) for s in output["defenses"]] == [
        ("bit-depth", 4, None), ("spatial-smoothing", None, 3)]

    # Two curves: the defended one labelled with its stages, and the undefended one, each from the output.
    curves = "#curve svg polyline.series"
    series = wait_for(lambda: len(css(d, curves)) == 2 and css(d, curves), 30, "two curves")
    bare = output["undefended"]["sec-curve"]
    assert len(series[1].get_attribute("points").split()) == len(bare["x-values"]) == len(output["sec-curve"]["x-values"])
    legend = [e.text for e in css(d, "#curve ul.legend li")]
    assert legend == ["fgsm linf, defended: " + " then ".join(stages), "undefended"]
    assert_dashed_pair(d, "#curve")

    # The facts: the stages in order with their parameters, adaptive, and the bare model's headline.
    assert [e.text for e in css(d, "#headline ol.stages li")] == stages
    headline = text(d, "#headline")
    assert "adaptive\nyes: attacked through the defenses" in headline
    assert f"clean accuracy {output['undefended']['clean-accuracy'] * 100:.1f}%" in headline
    assert " then ".join(stages) in text(d, "#facts")  # the request's own list, in the status panel

    # The per-epsilon table: an undefended column beside the defended accuracy, with the output's values.
    head = [e.text for e in css(d, "#per-epsilon thead th")]
    assert head[:3] == ["epsilon", "accuracy", "undefended"]
    cells = [[c.text for c in r.find_elements("css selector", "td")] for r in css(d, "#per-epsilon tbody tr")]
    assert [c[2] for c in cells] == [f"{y * 100:.1f}%" for y in bare["y-values"]]
    assert [c[1] for c in cells] == [f"{y * 100:.1f}%" for y in output["sec-curve"]["y-values"]]
    wait_for(lambda: css(d, "#report")[0].is_displayed(), 60, "the report")
    screenshot(d, "evaluation-defended")
    assert console_errors(d) == []

    # The list says the evaluation was defended, and with what.
    d.get(server.url + "/")
    line = wait_for(lambda: css(d, f"tr[data-job='{job_id}']"), 30, "the list row")[0].text
    assert "defended: bit-depth (bits 4) then spatial-smoothing (window 3)" in line

    # Compare: the defended curve and, dashed in its colour, the undefended one; the table names the defenses.
    d.get(f"{server.url}/compare?jobs={job_id}")
    wait_for(lambda: len(css(d, "#compare-curve svg polyline.series")) == 2, 30, "two curves on the compare page")
    assert_dashed_pair(d, "#compare-curve")
    assert [e.text for e in css(d, "#compare-curve ul.legend li")][1].endswith(", undefended")
    head = [e.text for e in css(d, "#compare-rows thead th")]
    cells = dict(zip(head, [c.text for c in css(d, "#compare-rows tbody tr td")]))
    assert cells["defenses"] == " then ".join(stages)
    assert cells["undefended at the largest epsilon"] == f"{bare['y-values'][-1] * 100:.1f}% at 0.2"
    assert cells["accuracy at the largest epsilon"] == f"{output['sec-curve']['y-values'][-1] * 100:.1f}% at 0.2"
    screenshot(d, "compare-defended")
    assert console_errors(d) == []


def assert_dashed_pair(d, where: str) -> None:
    """The second curve (undefended) is dashed in the first's colour, and its legend key is a dashed stroke."""
    defended, undefended = css(d, f"{where} svg polyline.series")
    assert defended.get_attribute("stroke") == undefended.get_attribute("stroke")
    assert not defended.get_attribute("stroke-dasharray") and undefended.get_attribute("stroke-dasharray")
    keys = css(d, f"{where} ul.legend li .swatch")
    assert keys[0].tag_name == "span" and keys[1].tag_name == "svg"
    assert keys[1].find_element("css selector", "line").get_attribute("stroke-dasharray") == undefended.get_attribute(
        "stroke-dasharray")
