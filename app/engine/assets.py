"""Small real models and datasets: the demo's, and the ones the tests and benchmarks make.

Nothing is downloaded: the digits come bundled with scikit-learn.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits in [0, 1] as N x 1 x 8 x 8, split 80/20 (train, val)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    tr, va = order[:cut], order[cut:]
    return x[tr], y[tr], x[va], y[va]


def digits_cnn(softmax: bool = True) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 15, seed: int = 0) -> nn.Module:
    """Plain Adam on cross-entropy; a final Softmax, if any, is skipped during training."""
    torch.manual_seed(seed)
    body = model[:-1] if isinstance(model[-1], nn.Softmax) else model
    opt = torch.optim.Adam(body.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    body.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(body(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    return model


def export_onnx(model: nn.Module, sample_shape: tuple[int, ...], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.zeros(2, *sample_shape),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
    return path


def write_h5(path: Path, samples: np.ndarray, labels: np.ndarray, *, one_hot: bool = False, n_classes: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("samples", data=samples.astype(np.float32), chunks=True)
        if one_hot:
            k = n_classes or int(labels.max()) + 1
            fh.create_dataset("labels", data=np.eye(k, dtype=np.float32)[labels])
        else:
            ds = fh.create_dataset("labels", data=labels.astype(np.int64))
            if n_classes:
                ds.attrs["num_classes"] = n_classes
    return path


def demo_assets(directory: Path, *, epochs: int = 15) -> tuple[Path, Path]:
    """The demo's model and validation set (made once, reused)."""
    model_path, data_path = directory / "digits_cnn.onnx", directory / "digits_val.h5"
    xtr, ytr, xva, yva = digits()
    if not (model_path.exists() and data_path.exists()):
        model = train(digits_cnn(softmax=True), xtr, ytr, epochs=epochs)
        export_onnx(model, (1, 8, 8), model_path)
        write_h5(data_path, xva, yva, n_classes=10)
    return model_path, data_path
