"""The web UI: server-rendered pages over the JSON API (list, new evaluation, one evaluation, compare).

The pages hold no data. Their scripts (``static/*.js``) call the JSON API with ``fetch``, sending the
API key the user entered once (kept in the tab's ``sessionStorage``, never in a URL), so the pages
themselves need no key and every object a user sees goes through the API's own tenant checks.
Everything user-supplied is written with ``textContent`` or Jinja's autoescape, never as HTML, and the
Content-Security-Policy admits only this origin's scripts. Like the API, this never imports torch.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template

from .. import __version__, schemas

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/web/static")

# Scripts from this origin only (no inline scripts, no eval). Inline styles and data: images are allowed
# because the report (``…/report``, self-contained HTML) is shown in a sandboxed srcdoc iframe, which
# inherits this policy; its scripts stay blocked by the sandbox and by script-src.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@bp.after_request
def secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _page(name: str, title: str, **context: object) -> str:
    """Render ``<name>.html`` with its script ``static/<name>.js``."""
    return render_template(f"{name}.html", title=title, page=name, script=f"{name}.js", version=__version__, **context)


@bp.get("/")
def index():
    return _page("list", "Evaluations")


@bp.get("/new")
def new():
    # The form's fallback when the service has no GET /api/attacks: the schema's own defaults.
    fallback = {
        "attacks": [
            {"name": n, "parameters": p, "perturbation-type": "random" if n == "noise" else "max-norm"}
            for n, p in schemas.ATTACK_PARAMETERS.items()
        ],
        "norms": list(schemas.NORMS),
        "perturbation-values": schemas.DEFAULT_PERTURBATION_VALUES,
        "fast-mode-samples": schemas.FAST_MODE_SAMPLES,
    }
    return _page("new", "New evaluation", fallback=fallback)


@bp.get("/evaluations/<job_id>")
def evaluation(job_id: str):
    return _page("evaluation", "Evaluation", job_id=job_id)


@bp.get("/compare")
def compare():
    return _page("compare", "Compare")


@bp.get("/api/docs")
def api_docs():
    """Swagger UI over ``/api/openapi.json`` (vendored in ``static/swagger-ui``); like every page it holds
    no data, so it needs no API key (Swagger UI's Authorize button sends one with the requests it tries)."""
    return render_template("docs.html")
