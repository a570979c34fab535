"""The one place onnx2pytorch is imported: without torchvision until a model needs it.

onnx2pytorch imports torchvision when it is imported, for five operators a classifier
rarely holds (DeformConv, RoiAlign, MaxRoiPool, NonMaxSuppression, ImageDecoder), and
``torchvision.ops`` imports ``torch._dynamo``: measured, about 1.5 s of an otherwise idle
machine's import time (3 s on a loaded one), paid by every ``python -m app evaluate`` and
every worker start. While onnx2pytorch is being imported, placeholders stand in for
``torchvision``, ``torchvision.ops`` and ``torchvision.io``; every name onnx2pytorch takes
from them is a :class:`Deferred` that imports the real torchvision the first time it is
called or looked into. The placeholders leave ``sys.modules`` right after, so a later
``import torchvision`` anywhere gets the real one. Where torchvision was already imported,
onnx2pytorch simply takes it.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

_STANDS_IN = ("torchvision", "torchvision.ops", "torchvision.io")
_lock = threading.Lock()


class Deferred:
    """``module.name``, resolved on first use: a call, or an attribute (``ImageReadMode.RGB``)."""

    def __init__(self, module: str, name: str) -> None:
        self._module, self._name = module, name

    def resolve(self) -> Any:
        return getattr(importlib.import_module(self._module), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.resolve(), attr)

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._name}>"


class _Placeholder(types.ModuleType):
    """A module whose every public name is :class:`Deferred` (``torchvision.ops`` included, for
    code that does ``import torchvision`` and later calls ``torchvision.ops.nms``)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return Deferred(self.__name__, name)


def _import_deferring_torchvision() -> None:
    placeholders = {name: _Placeholder(name) for name in _STANDS_IN}
    for name, module in placeholders.items():
        module.__path__ = []  # a package, so ``import torchvision.ops`` finds it in sys.modules
        sys.modules[name] = module
    try:
        importlib.import_module("onnx2pytorch")
    finally:
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def convert_model_class() -> type:
    """onnx2pytorch's ``ConvertModel``, importing onnx2pytorch (once) the cheap way."""
    with _lock:
        if "onnx2pytorch" not in sys.modules:
            if "torchvision" in sys.modules:
                importlib.import_module("onnx2pytorch")
            else:
                _import_deferring_torchvision()
    from onnx2pytorch import ConvertModel

    return ConvertModel
