"""JPEG compression as a defense: Dziugaite, Ghahramani, Roy, "A study of the effect of JPG compression on
adversarial images" (2016); Guo, Rana, Cisse, van der Maaten, "Countering Adversarial Images using Input
Transformations" (ICLR 2018).

Forward: the real codec. Each sample, mapped from the input bounds to 8 bits, is encoded at ``quality``
with Pillow and decoded back into the input range; 3 channels go as one RGB image (chroma subsampled as
JPEG does), any other count channel by channel as greyscale. Backward (BPDA, Athalye et al. 2018): the
identity, which is how that paper broke this defense.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .bpda import Stage, straight_through


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """One uint8 image (H x W, or H x W x 3) through a JPEG encode and decode."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB" if image.ndim == 3 else "L").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB" if image.ndim == 3 else "L"))


class JpegCompression(Stage):
    name = "jpeg-compression"

    def __init__(self, bounds: tuple[float, float], layout: str = "nchw", *, quality: int = 75) -> None:
        super().__init__(bounds, layout)
        self.quality = int(quality)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        img = self.images(x)
        span = self.ub - self.lb
        levels = ((img.detach().float() - self.lb) / span).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
        out = np.empty_like(levels)
        for i, sample in enumerate(levels):  # C x H x W
            if sample.shape[0] == 3:
                out[i] = jpeg_round_trip(np.ascontiguousarray(sample.transpose(1, 2, 0)), self.quality).transpose(2, 0, 1)
            else:
                for c, plane in enumerate(sample):
                    out[i, c] = jpeg_round_trip(np.ascontiguousarray(plane), self.quality)
        real = torch.from_numpy(out).to(img.device, torch.float32).div(255).mul(span).add(self.lb).to(img.dtype)
        return self.back(straight_through(img, real))
