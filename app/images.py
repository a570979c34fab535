"""Samples, perturbations and attribution maps as PNG images (numpy and pillow; no torch).

A sample is one row of the dataset as the engine reads it: C x H x W (``nchw``) or H x W x C
(``nhwc``), any float or integer scale given by the request's ``input-bounds``. Three channels
are drawn in colour, one in grey, any other count as the grey mean of its channels; a sample
that is not an image (a vector, say) is drawn as the nearest square or as one row. Small
images are magnified with nearest-neighbour pixels (an 8 x 8 digit becomes 128 x 128), large
ones are shrunk to fit ``MAX_SIDE``.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

MIN_SIDE = 128  # images are magnified (whole pixels) until their longer side reaches this
MAX_SIDE = 512  # and shrunk to fit this
HEATMAP = "inferno"  # matplotlib's perceptually uniform colour map, dark = no attribution


def channels_last(sample: np.ndarray, layout: str) -> np.ndarray:
    """``sample`` as H x W x C floats (C = 1 or 3)."""
    a = np.asarray(sample, dtype=np.float32)
    if a.ndim == 3:
        a = np.moveaxis(a, 0, -1) if layout != "nhwc" else a
    elif a.ndim == 2:
        a = a[..., None]
    else:  # not an image: the nearest square, else one row
        flat = a.reshape(-1)
        side = math.isqrt(flat.size)
        a = flat.reshape(side, side, 1) if side * side == flat.size else flat.reshape(1, -1, 1)
    if a.shape[-1] not in (1, 3):
        a = a.mean(-1, keepdims=True)
    return a


def sample_pixels(sample: np.ndarray, layout: str, bounds: tuple[float, float]) -> np.ndarray:
    """The sample's pixels as uint8, its input bounds mapped to 0..255."""
    lb, ub = bounds
    a = (channels_last(sample, layout) - lb) / (ub - lb)
    return _bytes(a)


def difference_pixels(delta: np.ndarray, layout: str) -> np.ndarray:
    """A perturbation magnified: mid-grey is no change, and the largest change in the image reaches
    black (negative) or white (positive); a zero perturbation is a uniform mid-grey image."""
    a = channels_last(delta, layout)
    peak = float(np.abs(a).max())
    return _bytes(0.5 + 0.5 * a / peak if peak > 0 else np.full_like(a, 0.5))


def heatmap_pixels(values: np.ndarray, layout: str, scale: float) -> np.ndarray:
    """An attribution map (shaped like a sample) as a colour heat map: the magnitude summed over the
    channels, divided by ``scale`` (shared by the maps that are compared) and clipped to 0..1."""
    from matplotlib import colormaps  # the colour map only, never pyplot

    a = np.abs(channels_last(values, layout)).sum(-1)
    a = np.clip(a / scale, 0, 1) if scale > 0 else np.zeros_like(a)
    return colormaps[HEATMAP](a, bytes=True)[..., :3]


def heatmap_scale(maps: list[np.ndarray], layout: str) -> float:
    """One scale for several maps (a sample's clean and adversarial ones): the 99th percentile of their
    magnitudes, so a few extreme pixels do not turn the rest black."""
    values = np.concatenate([np.abs(channels_last(m, layout)).sum(-1).ravel() for m in maps])
    return float(np.percentile(values, 99)) if values.size else 0.0


def png(pixels: np.ndarray) -> bytes:
    """H x W x {1, 3} uint8 as PNG bytes, magnified (or shrunk) as the module says."""
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    longest = max(img.size)
    if longest < MIN_SIDE:
        factor = -(-MIN_SIDE // longest)  # whole pixels: the smallest factor reaching MIN_SIDE
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    elif longest > MAX_SIDE:
        ratio = MAX_SIDE / longest
        img = img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _bytes(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)
