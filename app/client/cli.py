"""The remote command line: ``python -m app submit|status|wait|results|list|delete`` against a running
server (``--url``, default ``$SECEV_URL`` or http://127.0.0.1:8000; ``--api-key``, default ``$SECEV_API_KEY``).

Exit codes: 0 done, 1 the job failed or was canceled, 2 a usage error or an error answer from the API
(its message printed on stderr). Results go to stdout; progress and messages to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cli import print_curve, request_body
from .errors import ApiError, JobFailed
from .session import ENDED, Client

DEFAULT_URL = "http://127.0.0.1:8000"
LISTS = {"evaluations": "security_evaluations", "models": "models", "datasets": "datasets"}


def add_remote_commands(sub: argparse._SubParsersAction, request: argparse.ArgumentParser) -> None:
    """Add the remote subcommands; ``request`` is the evaluation's flags, shared with ``evaluate``."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", default=os.environ.get("SECEV_URL", DEFAULT_URL), help="the API's base URL ($SECEV_URL)")
    remote.add_argument("--api-key", default=os.environ.get("SECEV_API_KEY"), help="API key ($SECEV_API_KEY)")
    remote.add_argument("--timeout", type=float, default=3600, help="seconds to wait for a job or an upload's checks")
    shown = argparse.ArgumentParser(add_help=False)
    how = shown.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="print the whole output as JSON")
    how.add_argument("--csv", action="store_true", help="print the server's CSV (one row per epsilon)")
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("job_id", help="the evaluation's id (from submit or list)")

    submit = sub.add_parser(
        "submit",
        parents=[remote, request, shown],
        help="submit an evaluation to a server; local files are uploaded first",
        description="--trained-model and --dataset take a local file (uploaded, streamed, and checked by a worker "
        "first), an id from an earlier upload, or a file name under the server's files/ folder.",
    )
    submit.add_argument("--external-data", type=Path, action="append", default=[], help="a model's external-data file")
    submit.add_argument("--wait", action="store_true", help="wait for the curve (progress bar) and print it")
    submit.add_argument("--quiet", action="store_true", help="no progress bar")
    submit.set_defaults(remote=_command(submit_command))
    status = sub.add_parser("status", parents=[remote, job], help="an evaluation's status record (JSON)")
    status.set_defaults(remote=_command(lambda c, a: _print_json(c.status(a.job_id))))
    wait = sub.add_parser("wait", parents=[remote, job, shown], help="wait with a progress bar, then print the curve")
    wait.add_argument("--quiet", action="store_true", help="no progress bar")
    wait.set_defaults(remote=_command(lambda c, a: wait_and_show(c, a.job_id, a)))
    results = sub.add_parser("results", parents=[remote, job, shown], help="a finished evaluation's curve")
    results.set_defaults(remote=_command(results_command))
    listing = sub.add_parser("list", parents=[remote], help="your evaluations (or models, datasets), oldest first")
    listing.add_argument("what", nargs="?", choices=tuple(LISTS), default="evaluations")
    # Checked by the API, which names the statuses it knows in its 400.
    listing.add_argument("--status", help="evaluations with this status only (queued, started, finished, failed, canceled)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(remote=_command(list_command))
    delete = sub.add_parser("delete", parents=[remote], help="delete evaluations (a queued or running one is canceled)")
    delete.add_argument("job_ids", nargs="+", metavar="job_id")
    delete.set_defaults(remote=_command(delete_command))


def _command(body: Callable[[Client, argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """A subcommand with its client, and the exit code of each way it can end."""

    def run(args: argparse.Namespace) -> int:
        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)  # the client's retry notices
        try:
            with Client(args.url, api_key=args.api_key) as client:
                return body(client, args) or 0
        except JobFailed as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        except ApiError as exc:
            details = f" ({json.dumps(exc.details)})" if exc.details is not None else ""
            print(f"error: HTTP {exc.status}: {exc.message}{details}", file=sys.stderr)
            return 2
        except OSError as exc:  # TimedOut, Unreachable, and a local file that cannot be read
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C while waiting stops the waiting, not the job
            print("\ninterrupted: a submitted evaluation goes on (see `python -m app list`)", file=sys.stderr)
            return 130

    return run


def submit_command(client: Client, args: argparse.Namespace) -> int:
    body = request_body(args)
    if args.external_data and not Path(body["trained-model"]).is_file():
        return _usage(f"--external-data goes with a local model file, and {body['trained-model']} is not one")
    for field, kind in (("trained-model", "models"), ("dataset", "datasets")):
        local = Path(body[field])
        if local.is_file():  # else an id or a name under the server's files/, which the API checks
            extra = args.external_data if kind == "models" else ()
            print(f"uploading {local} ...", file=sys.stderr)
            meta = client.upload(kind, local, external_data=extra, timeout=args.timeout)
            print(f"{kind[:-1]} {meta['id']} ready", file=sys.stderr)
            body[field] = meta["id"]
    job_id = client.submit(body)["job_id"]
    if not args.wait:
        print(job_id)
        return 0
    print(f"submitted {job_id}", file=sys.stderr)
    return wait_and_show(client, job_id, args)


def wait_and_show(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Wait for a job with a progress bar on stderr (sample-epsilon pairs done), then show its curve."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="sample-eps", file=sys.stderr, disable=args.quiet, dynamic_ncols=True)

    def show(st: dict[str, Any]) -> None:
        progress = st.get("progress") or {}
        bar.set_description(st["job-status"])
        if progress.get("total"):
            bar.total = progress["total"]
            bar.n = progress.get("done", 0)
        bar.refresh()

    try:
        output = client.wait(job_id, timeout=args.timeout, on_status=show)
    finally:
        bar.close()
    show_output(client, job_id, output, args)
    return 0


def results_command(client: Client, args: argparse.Namespace) -> int:
    st = client.status(args.job_id)
    if st["job-status"] in ENDED:
        raise JobFailed(st)
    if st["job-status"] != "finished":
        return _usage(f"evaluation {args.job_id} is {st['job-status']}: wait for it with `wait {args.job_id}`")
    show_output(client, args.job_id, client.output(args.job_id), args)
    return 0


def show_output(client: Client, job_id: str, output: dict[str, Any], args: argparse.Namespace) -> None:
    if args.csv:  # the server's bytes as they are (its CRLF line ends included): `--csv > curve.csv` is its file
        sys.stdout.flush()
        sys.stdout.buffer.write(client.download(f"/api/security_evaluations/{job_id}/output/csv"))
        sys.stdout.buffer.flush()
    elif args.json:
        _print_json(output)
    else:
        print_curve(output)


def list_command(client: Client, args: argparse.Namespace) -> int:
    if args.status and args.what != "evaluations":
        return _usage("--status filters evaluations only")
    for item in client.items(LISTS[args.what], status=args.status):
        if args.json:
            print(json.dumps(item))
        elif args.what == "evaluations":
            done = "{done}/{total}".format(**{"done": 0, "total": 0, **(item.get("progress") or {})})
            print(f"{item['job_id']}  {item['job-status']:<9}  {done:>11}  {item.get('created_at', '')}")
        else:
            print(f"{item['id']}  {item.get('status', ''):<11}  {item.get('name', '')}")
    return 0


def delete_command(client: Client, args: argparse.Namespace) -> None:
    for job_id in args.job_ids:
        answer = client.delete(job_id)
        print(f"deleted {answer['job_id']} (was {answer['was']})")


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))
