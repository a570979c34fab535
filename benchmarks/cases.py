"""The strength benchmark's three models, made here from bundled data (nothing is downloaded).

- ``digits``: the demo's CNN on scikit-learn's 8x8 digits (1 channel, no preprocessing).
- ``rgb16``: a small CNN on generated 3 x 16 x 16 colour digits, with mean/std preprocessing
  applied by the service (the ONNX file expects normalized input).
- ``resnet32``: a CIFAR-sized residual network (3 x 32 x 32, three stages of one basic block, width 8) on
  generated colour digits, trained for about a minute on two CPU cores, with mean/std preprocessing.

The colour digits: each 8x8 digit is upsampled, given a random foreground and background colour
and a little noise, so classes differ by shape, never by colour.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.engine.assets import digits, digits_cnn, export_onnx, train, write_h5  # noqa: E402


@dataclass
class Case:
    name: str
    model: Path
    dataset: Path
    epsilons: list[float]
    preprocessing: dict[str, list[float]] = field(default_factory=dict)
    description: str = ""
    train_seconds: float = 0.0

    @property
    def weights(self) -> Path:
        """The trained network's state dict, for the reference side (a torchattacks user's own torch model)."""
        return self.model.with_suffix(".pt")


def colour_digits(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as N x 3 x size x size in [0, 1]: random colours, shape-only classes; split as ``digits``."""
    xtr, ytr, xva, yva = digits()
    rng = np.random.default_rng(seed)

    def paint(x: np.ndarray) -> np.ndarray:
        up = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
        shape = up.numpy().clip(0, 1)
        fg = rng.uniform(0.4, 1.0, (len(x), 3, 1, 1)).astype(np.float32)
        bg = rng.uniform(0.0, 0.35, (len(x), 3, 1, 1)).astype(np.float32)
        noise = rng.normal(0, 0.03, (len(x), 3, size, size)).astype(np.float32)
        return (bg + (fg - bg) * shape + noise).clip(0, 1).astype(np.float32)

    return paint(xtr), ytr, paint(xva), yva


def small_rgb_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet_cifar(width: int = 8, blocks: int = 1) -> nn.Module:
    """A ResNet for 32 x 32 inputs (He et al., 2016, section 4.2), ``blocks`` basic blocks per stage."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for b in range(blocks):
            layers.append(Block(cin, cout, 2 if stage and b == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


ARCHITECTURES = {
    "digits": lambda: digits_cnn(softmax=False),
    "rgb16": lambda: small_rgb_cnn(),
    "resnet32": lambda: resnet_cifar(),
}


class Standardize(nn.Module):
    """``(x - mean) / std`` per channel, in front of the network on the reference side."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def torch_model(name: str, weights: Path, preprocessing: dict[str, list[float]]) -> nn.Module:
    """The trained network as plain torch (the softmax of the demo CNN left out), with its preprocessing."""
    net = ARCHITECTURES[name]()
    net.load_state_dict(torch.load(weights, weights_only=True))
    model = nn.Sequential(Standardize(**preprocessing), net) if preprocessing else net
    return model.eval()


def normalized(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)


def make_cases(work: Path, *, quick: bool = False) -> list[Case]:
    """Train (or reuse) the three models and write their ONNX and HDF5 files under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    model, data = work / "digits.onnx", work / "digits.h5"
    if not model.exists():
        net = train(digits_cnn(softmax=True), xtr, ytr, epochs=15)
        torch.save(net.state_dict(), model.with_suffix(".pt"))
        export_onnx(net, (1, 8, 8), model)
        write_h5(data, xva, yva, n_classes=10)
    cases.append(Case("digits", model, data, [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3], description="demo CNN, 1 x 8 x 8"))
    for name, size, net_fn, epochs, eps in (
        ("rgb16", 16, small_rgb_cnn, 12, [0.0, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12]),
        ("resnet32", 32, resnet_cifar, 2 if quick else 8, [0.0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06]),
    ):
        model, data, meta = work / f"{name}.onnx", work / f"{name}.h5", work / f"{name}.json"
        if not model.exists():
            xtr, ytr, xva, yva = colour_digits(size, seed=1)
            mean, std = xtr.mean(axis=(0, 2, 3)), xtr.std(axis=(0, 2, 3))
            t0 = time.perf_counter()
            net = train(net_fn(), normalized(xtr, mean, std), ytr, epochs=epochs)
            seconds = time.perf_counter() - t0
            torch.save(net.state_dict(), model.with_suffix(".pt"))
            export_onnx(net, (3, size, size), model)
            write_h5(data, xva, yva, n_classes=10)
            meta.write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist(), "train-seconds": seconds}))
        info = json.loads(meta.read_text())
        cases.append(
            Case(
                name,
                model,
                data,
                eps,
                {"mean": info["mean"], "std": info["std"]},
                f"3 x {size} x {size}, mean/std preprocessing",
                info["train-seconds"],
            )
        )
    return cases
