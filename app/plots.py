"""Accuracy-vs-epsilon plots (PNG or SVG), drawn by matplotlib off the request thread.

matplotlib takes about 1.5 s to import and holds the GIL while it draws, which would stall
every other request thread of a gunicorn process (and its heartbeat). So a plot is drawn in
a child process (``python -m app.plots``; never a fork of a threaded server), one per API
process, started on the first plot and kept; the request thread only waits for the bytes.
One child draws one plot at a time, so plotting takes at most one core per API process. Nothing here
imports matplotlib in the API process itself. A finished evaluation's output never changes,
so a job's plots are cached in its directory, keyed by what they show.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from .exceptions import BackendUnavailableError

FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
RENDER_TIMEOUT = 60  # seconds a request waits for its plot
PLOT_VERSION = "2"  # part of the cache key: bump when the drawing changes
CACHE_DIR = "plots"
CACHE_FILES = 16  # per job; the oldest go first
LINESTYLES = {"attack": "-", "undefended": "-.", "baseline": "--"}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def draw(spec: dict[str, Any], fmt: str) -> bytes:
    """The plot of ``spec`` (title, xlabel, series) as PNG or SVG bytes. Runs in the child process."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    attacks, colour = 0, COLOURS[0]
    for s in spec["series"]:
        role = s["role"]
        if role == "baseline":
            colour = "#7f7f7f"
        elif role == "attack":
            colour = COLOURS[attacks % len(COLOURS)]
            attacks += 1
        # else undefended: the curve just drawn without its defenses, in that curve's colour, dash-dotted
        lo, hi = ([math.nan if v is None else v for v in s[key]] for key in ("lo", "hi"))  # no interval: no band
        ax.fill_between(s["x"], lo, hi, color=colour, alpha=0.2 if role == "attack" else 0.1, linewidth=0)
        label = f" {s['label']}" if s["label"].startswith("_") else s["label"]  # a leading '_' would hide it from the legend
        ax.plot(s["x"], s["y"], marker="o", markersize=3.5, color=colour, linestyle=LINESTYLES[role], label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel(spec["xlabel"])
    ax.set_ylabel("accuracy (shaded: 95% interval)")
    # User-given names are drawn as plain text: a '$' never starts mathtext (nor fails to parse).
    ax.set_title(spec["title"], parse_math=False, fontsize=10)
    legend = ax.legend(loc="best", fontsize=8)
    for text in legend.get_texts():
        text.set_parse_math(False)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else {"Software": None})
    return out.getvalue()


class Renderer:
    """One long-lived child process (``python -m app.plots``) that draws plots, one at a time.

    A plain subprocess rather than multiprocessing: ``spawn`` re-runs the parent's main script in
    the child, which for a server's launcher (or any script without a main guard) starts it again.
    Requests and answers are length-prefixed JSON and bytes on the child's stdin and stdout; a child
    that dies or overruns is killed and replaced on the next plot."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def render(self, spec: dict[str, Any], fmt: str) -> bytes:
        if not self.lock.acquire(timeout=RENDER_TIMEOUT):
            raise BackendUnavailableError(f"plots are busy (waited {RENDER_TIMEOUT} s); retry shortly")
        try:
            for attempt in (1, 2):
                try:
                    return self._ask(json.dumps({"spec": spec, "format": fmt}).encode())
                except (OSError, EOFError, ValueError):
                    self.stop()
                    if attempt == 2:
                        raise BackendUnavailableError("the plotting process failed; retry shortly") from None
                except TimeoutError:
                    self.stop()
                    raise BackendUnavailableError(f"the plot took more than {RENDER_TIMEOUT} s; retry shortly") from None
            raise AssertionError("unreachable")
        finally:
            self.lock.release()

    def _ask(self, request: bytes) -> bytes:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.plots"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=Path(__file__).resolve().parent.parent,
            )
        self.proc.stdin.write(struct.pack(">I", len(request)) + request)
        self.proc.stdin.flush()
        deadline = time.monotonic() + RENDER_TIMEOUT
        status = self._read(1, deadline)
        (size,) = struct.unpack(">I", self._read(4, deadline))
        payload = self._read(size, deadline)
        if status != b"0":
            raise ValueError(payload.decode(errors="replace"))
        return payload

    def _read(self, n: int, deadline: float) -> bytes:
        out = b""
        fd = self.proc.stdout.fileno()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise EOFError("the plotting process exited")
            out += chunk
        return out

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


_renderer = Renderer()


def render(spec: dict[str, Any], fmt: str) -> bytes:
    """Draw in the child process and wait (at most ``RENDER_TIMEOUT``); a child that died is replaced once."""
    return _renderer.render(spec, fmt)


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: a request (length, JSON) in, an answer (status, length, bytes) out, until EOF."""
    while header := stdin.read(4):
        (size,) = struct.unpack(">I", header)
        request = json.loads(stdin.read(size))
        try:
            status, payload = b"0", draw(request["spec"], request["format"])
        except Exception as exc:  # reported to the parent, which answers 503 and starts a fresh child
            status, payload = b"1", f"{type(exc).__name__}: {exc}".encode()
        stdout.write(status + struct.pack(">I", len(payload)) + payload)
        stdout.flush()


def cache_key(spec: dict[str, Any], fmt: str) -> str:
    text = json.dumps({"v": PLOT_VERSION, "fmt": fmt, "spec": spec}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached(job_dir: Path | None, spec: dict[str, Any], fmt: str) -> bytes:
    """The plot, from the job's cache when drawn before; drawn (and cached) otherwise.

    Only a job directory that already exists gets a cache (a job deleted meanwhile is not re-created)."""
    path = job_dir / CACHE_DIR / f"{cache_key(spec, fmt)}.{fmt}" if job_dir is not None else None
    if path is not None and path.is_file() and not path.is_symlink():
        try:
            return path.read_bytes()
        except OSError:
            pass
    data = render(spec, fmt)
    if path is not None and job_dir.is_dir() and not job_dir.is_symlink():
        try:
            _store(path, data)
        except OSError:
            pass  # a cache that cannot be written only costs a redraw
    return data


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    entries = sorted((p for p in path.parent.iterdir() if p.suffix in (".png", ".svg")), key=lambda p: p.stat().st_mtime)
    for old in entries[:-CACHE_FILES]:
        old.unlink(missing_ok=True)


if __name__ == "__main__":
    # The answers go to the original stdout; anything a library prints goes to stderr, not into them.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, answers)
