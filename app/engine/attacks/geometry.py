"""Geometry of the perturbation balls: norms, projections, clipping to the input bounds, steepest
directions and random points, shared by every attack."""

from __future__ import annotations

import torch

Bounds = tuple[float, float]


def batch_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


def project(delta: torch.Tensor, eps: torch.Tensor | float, norm: str) -> torch.Tensor:
    """Project each row of ``delta`` onto the ``norm`` ball of radius ``eps`` (scalar or per sample)."""
    eps_t = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)
    if eps_t.dim() == 0:
        eps_t = eps_t.expand(len(delta))
    eps_b = batch_view(eps_t, delta)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps_b), -eps_b)
    norms = batch_view(lp_norm(delta, "l2"), delta)
    return delta * torch.clamp(eps_b / norms.clamp_min(1e-12), max=1.0)


def clip_to_bounds(x: torch.Tensor, delta: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    return (x + delta).clamp(bounds[0], bounds[1]) - x


def steepest_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm direction of steepest ascent: sign for L-inf, normalized gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / batch_view(lp_norm(grad, "l2").clamp_min(1e-12), grad)


def random_in_ball(like: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniform random point of the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    direction = g / batch_view(lp_norm(g, "l2").clamp_min(1e-12), g)
    d = like[0].numel()
    radius = torch.rand(len(like), generator=generator, device=like.device, dtype=like.dtype) ** (1.0 / d)
    return direction * batch_view(radius * eps, like)


def random_on_sphere(like: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """Random noise of size exactly ``eps``: random signs (L-inf) or a random direction (L2)."""
    if norm == "linf":
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return torch.where(u < 0.5, -eps, eps).to(like.dtype)
    g = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return g / batch_view(lp_norm(g, "l2").clamp_min(1e-12), g) * eps
