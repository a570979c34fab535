"""One reference run as a whole process, for side-by-side timing: a loop of torchattacks over the epsilons.

    python benchmarks/reference.py '{"case": ..., "weights": ..., "dataset": ..., "attack": "pgd" | "autoattack", ...}'

What a torchattacks user runs: the trained network as plain torch (``cases.torch_model``: the same
weights our side reads from the ONNX export), the samples from the same HDF5 file, one attack per
epsilon. Prints one JSON object: the curve, load and attack seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

import h5py  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402
from cases import torch_model  # noqa: E402


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def main(spec: dict) -> dict:
    model = torch_model(spec["case"], Path(spec["weights"]), spec.get("preprocessing") or {})
    with h5py.File(spec["dataset"], "r") as fh:
        x = torch.from_numpy(fh["samples"][: spec["n"]])
        y = torch.from_numpy(fh["labels"][: spec["n"]]).long()
    batch = spec.get("batch", 128)
    t_load = time.perf_counter()
    torch.manual_seed(spec["seed"])
    curve = [accuracy(model, x, y, batch)]
    for eps in spec["epsilons"][1:]:
        if spec["attack"] == "pgd":
            atk = torchattacks.PGD(model, eps=eps, alpha=spec["step_size"] * eps, steps=spec["steps"], random_start=True)
        else:
            atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=spec["seed"])
        adv = torch.cat([atk(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)])
        curve.append(accuracy(model, adv, y, batch))
    return {"curve": curve, "load-seconds": t_load - T0, "attack-seconds": time.perf_counter() - t_load}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
