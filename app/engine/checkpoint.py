"""Per-epsilon checkpoints of a sweep in a job's work directory, resumed by a re-run of the same request.

The warm-start perturbations (and FMN's anchors) are row files beside the checkpoint, one per attempt, so an
attempt that lost the job (a stalled work-horse a newer attempt replaced) never overwrites the newer one's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .attacks.base import StopRequested
from .attacks.state import SweepState
from .rows import RowFile

CHECKPOINT = "checkpoint.npz"


def fingerprint(request: dict[str, Any]) -> str:
    """What must match for a checkpoint to be resumed: the whole normalized request
    (the batch size too, since random draws are seeded per batch)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def always() -> bool:
    """The default ``owns``: a run with no job to lose always owns its files."""
    return True


class Checkpoint:
    """Per-epsilon checkpoint in a work directory; the warm-start deltas (and FMN's anchors) live
    in row files beside it (:class:`RowFile`), read and written one batch at a time.

    Each attempt (``tag``) writes its own ``delta.<tag>.npy`` and ``anchor.<tag>.npy`` (a resumed
    attempt copies the checkpoint's) and its own temporary checkpoint, renamed over ``checkpoint.npz``
    only if ``owns()`` still says so right before (it is asked before the write as well): a stale
    attempt never touches the files of the attempt that replaced it.
    """

    def __init__(self, work_dir: Path, request: dict[str, Any], tag: str = "local", owns: Callable[[], bool] = always) -> None:
        self.dir = work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.print = fingerprint(request)
        tag = re.sub(r"[^A-Za-z0-9-]", "", tag)[:64] or "local"
        self.delta_path = self.dir / f"delta.{tag}.npy"
        self.anchor_path = self.dir / f"anchor.{tag}.npy"
        self.tmp_path = self.dir / f"checkpoint.{tag}.tmp.npz"
        self.owns = owns

    def _adopt(self, name: str, mine: Path) -> RowFile:
        """This attempt's own copy of a row file the checkpoint names (the older attempt may still write to its own)."""
        source = self.dir / name
        if source != mine:
            shutil.copyfile(source, self.tmp_path.with_suffix(".npy"))
            os.replace(self.tmp_path.with_suffix(".npy"), mine)
        return RowFile.open(mine)

    def load_or_create(self, n: int, shape: tuple[int, ...], n_eps: int) -> tuple[SweepState, bool]:
        path = self.dir / CHECKPOINT
        if path.exists():
            with np.load(path, allow_pickle=False) as ck:
                name = str(ck["delta_file"]) if "delta_file" in ck.files else "delta.npy"
                anchor_name = str(ck["anchor_file"]) if "anchor_file" in ck.files else None
                usable = str(ck["fingerprint"]) == self.print and ck["broken_at"].shape == (n,) and (self.dir / name).is_file()
                if usable and (anchor_name is None or (self.dir / anchor_name).is_file()):
                    delta = self._adopt(name, self.delta_path)
                    if delta.shape == (n, *shape):
                        state = SweepState(
                            ck["broken_at"].copy(), ck["norms"].copy(), delta, int(ck["next_k"]), bool(ck["prepared"])
                        )
                        # A checkpoint from before the confidences were kept resumes without them (figures: null).
                        state.true_conf = ck["true_conf"].copy() if "true_conf" in ck.files else None
                        if anchor_name is not None or "anchor" in ck.files:  # the latter: before anchors had a file
                            state.min_norm = ck["min_norm"].copy()
                            if anchor_name is not None:
                                state.anchor = self._adopt(anchor_name, self.anchor_path)
                            else:
                                state.anchor = RowFile.from_array(self.anchor_path, ck["anchor"])
                        return state, True
                    delta.close()
        return SweepState.empty(n, shape, n_eps, delta=RowFile.create(self.delta_path, n, shape)), False

    def save(self, state: SweepState) -> None:
        # Asked before writing too: a work-horse woken after a takeover (SIGSTOP, a long GC pause) would
        # otherwise still write its temporary checkpoint, only to delete it at the check below.
        if not self.owns():
            raise StopRequested
        extra: dict[str, Any] = {}
        if isinstance(state.delta, RowFile):
            state.delta.flush()
        if isinstance(state.anchor, RowFile):
            state.anchor.flush()
            extra = {"anchor_file": state.anchor.path.name, "min_norm": state.min_norm}
        elif state.anchor is not None:
            extra = {"anchor": state.anchor, "min_norm": state.min_norm}
        if state.true_conf is not None:
            extra["true_conf"] = state.true_conf
        np.savez(
            self.tmp_path,
            fingerprint=self.print,
            broken_at=state.broken_at,
            norms=state.norms,
            next_k=state.next_k,
            prepared=state.prepared,
            delta_file=self.delta_path.name,
            **extra,
        )
        if not self.owns():
            self.tmp_path.unlink(missing_ok=True)
            raise StopRequested
        self.tmp_path.replace(self.dir / CHECKPOINT)
        for pattern, mine in (("delta.*.npy", self.delta_path), ("anchor.*.npy", self.anchor_path)):
            for older in self.dir.glob(pattern):  # no longer named by the checkpoint
                if older != mine:
                    older.unlink(missing_ok=True)

    def finish(self) -> None:
        for pattern in ("checkpoint*.npz", "delta*.npy", "anchor*.npy"):
            for path in self.dir.glob(pattern):
                path.unlink(missing_ok=True)
