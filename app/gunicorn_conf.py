"""gunicorn settings for this service: ``gunicorn -c python:app.gunicorn_conf``.

The one configuration the Makefile, the Dockerfile, compose, the demo and the
tests all start the API with. Every value can be changed by an environment
variable, read here when gunicorn starts:

``BIND`` (127.0.0.1:8000), ``WEB_CONCURRENCY`` (2 worker processes), ``THREADS``
(8 per worker), ``WORKER_TIMEOUT`` (60 s), ``GRACEFUL_TIMEOUT`` (30 s),
``KEEPALIVE`` (5 s), ``IDLE_TIMEOUT`` (60 s), ``LIMIT_REQUEST_LINE`` (4094),
``LIMIT_REQUEST_FIELDS`` (100), ``LIMIT_REQUEST_FIELD_SIZE`` (8190), ``ACCESS_LOG``
(none; ``-`` for stdout), ``CONTROL_SOCKET`` (none: gunicorn's control socket is off).

Why threads: a ``sync`` worker serves one connection at a time, so two clients
that send slowly (or not at all) take both workers and ``/api/health`` waits
behind them; its heartbeat also stops while it reads a long upload, so the
worker timeout kills the upload. A ``gthread`` worker reads each request in a
thread of its own, its main loop keeps the heartbeat while uploads stream, and a
connection that sends nothing is parked in the poller instead of holding a
thread. ``IDLE_TIMEOUT`` bounds how long a thread waits on a client that
stopped sending in the middle of a request.

Errors stay JSON at the edges: gunicorn answers malformed requests (request
line too long, too many or too large headers, bad syntax) itself, with an HTML
page written by ``gunicorn.util.write_error``; that one function is replaced
below by :func:`write_json_error`. A worker that misses its heartbeat for
``WORKER_TIMEOUT`` seconds is sent SIGABRT by the master; :func:`worker_abort`
then answers every request it has not answered yet with a JSON 503 before the
worker exits (a worker so stuck that it cannot run a signal handler is killed
with SIGKILL a second later, and its clients see the connection close).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from typing import Any

from gunicorn import util
from gunicorn.http.errors import ParseException
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.exceptions import BadRequest, RequestTimeout


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


wsgi_app = "app:create_app()"
bind = [os.environ.get("BIND") or "127.0.0.1:8000"]
workers = _env_int("WEB_CONCURRENCY", 2)
threads = _env_int("THREADS", 8)
timeout = _env_int("WORKER_TIMEOUT", 60)
graceful_timeout = _env_int("GRACEFUL_TIMEOUT", 30)
keepalive = _env_int("KEEPALIVE", 5)
IDLE_TIMEOUT = _env_int("IDLE_TIMEOUT", 60)
limit_request_line = _env_int("LIMIT_REQUEST_LINE", 4094)
limit_request_fields = _env_int("LIMIT_REQUEST_FIELDS", 100)
limit_request_field_size = _env_int("LIMIT_REQUEST_FIELD_SIZE", 8190)
accesslog = os.environ.get("ACCESS_LOG") or None
# gunicorn's runtime control socket (worker count, reload, shutdown) defaults to one shared path in
# $HOME; every instance on the machine would race for it. Off unless CONTROL_SOCKET names a path.
control_socket = os.environ.get("CONTROL_SOCKET") or "gunicorn.ctl"
control_socket_disable = not os.environ.get("CONTROL_SOCKET")


def refuse_open_publication() -> None:
    """docker-compose.yml passes ``PUBLISHED_HOST``, the host address the API's port is published on
    (its ``API_HOST``, 127.0.0.1 by default). Published beyond loopback with no API keys, anyone who
    reaches the host could use the service: refuse to start, saying why."""
    host = (os.environ.get("PUBLISHED_HOST") or "").strip().strip("[]")
    if not host or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass  # a host name: not loopback
    from app.config import Config

    if not Config.from_env().api_keys:
        raise SystemExit(
            f"refusing to start: the API is published on {host} (API_HOST) with no API keys; "
            "set API_KEYS (or API_KEYS_FILE), or publish on 127.0.0.1"
        )


refuse_open_publication()


def json_error_response(status: int, reason: str, message: str, details: Any = None, extra: str = "") -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body; the connection closes after it.
    ``extra`` holds further header lines, each ending in CRLF."""
    body = json.dumps({"error": message, "details": details}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for ``gunicorn.util.write_error`` (same signature): JSON instead of an HTML page."""
    util.write_nonblock(sock, json_error_response(status_int, reason, reason, mesg or None))


# The workers look the function up on the module at call time, so this one assignment
# covers every error page gunicorn writes (it runs in the master, before the workers fork).
util.write_error = write_json_error


class IdleTimeoutSocket(socket.socket):
    """A client socket whose blocking reads give up after ``IDLE_TIMEOUT`` s without a byte.

    gunicorn's threaded worker switches client sockets to plain blocking mode before
    reading a request, so a client that stops sending half-way through would hold a
    thread forever. Here "blocking" means "blocking, with a timeout": a slow but steady
    upload is unaffected (the timeout is per read), a stalled one frees its thread.
    """

    __slots__ = ()

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(IDLE_TIMEOUT)
        else:
            super().setblocking(False)


class CheckedInput:
    """``wsgi.input`` whose errors reach the app as HTTP errors it answers in JSON: framing errors
    (a bad chunk size, a missing chunk terminator), which gunicorn raises while the app reads the
    body and would otherwise be an unexpected exception (a 500), are a 400; a read that waited
    ``IDLE_TIMEOUT`` seconds for the next byte is a 408."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def _checked(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except ParseException as exc:
            raise BadRequest(f"malformed request body: {exc}") from None
        except TimeoutError:
            raise RequestTimeout(f"the client stopped sending the request body for {IDLE_TIMEOUT} s") from None

    def read(self, size: int | None = None) -> bytes:
        return self._checked(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._checked(self._body.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._checked(self._body.readlines, hint)

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class Worker(ThreadWorker):
    """gunicorn's ``gthread`` worker with idle-timeout client sockets, checked request bodies
    and JSON answers on abort."""

    def init_process(self) -> None:
        self.unanswered: dict[int, dict[str, Any]] = {}
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        # Every connection passes here before a thread reads from it. Re-class its socket in
        # place (same memory layout, so this is allowed): every read then honours IDLE_TIMEOUT.
        if type(conn.sock) is socket.socket:
            conn.sock.__class__ = IdleTimeoutSocket
        super().enqueue_req(conn)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = self.wsgi

        def tracked(environ: dict[str, Any], start_response: Any) -> Any:
            # A request is "unanswered" until the app starts its response; only those get the 503.
            state = {"sock": environ.get("gunicorn.socket"), "answered": False}
            environ["wsgi.input"] = CheckedInput(environ["wsgi.input"])
            self.unanswered[id(state)] = state

            def start(status: str, headers: list, exc_info: Any = None) -> Any:
                state["answered"] = True
                return start_response(status, headers, exc_info)

            try:
                return app(environ, start)
            finally:
                self.unanswered.pop(id(state), None)

        self.wsgi = tracked


worker_class = Worker


def worker_abort(worker: Worker) -> None:
    """gunicorn hook, run in the worker on SIGABRT (its heartbeat stopped): JSON 503 to every unanswered client."""
    message = json_error_response(
        503,
        "Service Unavailable",
        "the API worker stopped responding and was restarted; retry the request",
        {"worker-timeout-s": timeout},
        extra="Retry-After: 1\r\n",
    )
    for state in list(getattr(worker, "unanswered", {}).values()):
        sock = state["sock"]
        if state["answered"] or sock is None:
            continue
        try:
            sock.settimeout(1.0)
            sock.sendall(message)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
