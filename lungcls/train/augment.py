"""On-the-fly augmentation of batches of CT tensors, 2D or 3D, from a seeded generator.

Per sample: flips along each spatial axis, a small in-plane (axial) rotation, a small
shift, and intensity jitter; `strength` scales all of it (0 turns it off). Optional:
`quarter_turns` adds a random multiple of 90 degrees to the in-plane rotation (a nodule has
no preferred in-plane direction; the patch must be square in-plane). One
`affine_grid`/`grid_sample` call does rotation and shift together, so a batch costs one
interpolation. The same generator state gives the same augmentation: runs are repeatable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION_DEG = 15.0
MAX_SHIFT_FRACTION = 0.06
GAIN_STD, OFFSET_STD = 0.05, 0.03


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    strength: float,
    *,
    quarter_turns: bool = False,
) -> torch.Tensor:
    """Augment a batch (N, C, H, W) or (N, C, D, H, W) of values in [0, 1]."""
    if strength <= 0:
        return x
    n, spatial = x.shape[0], x.ndim - 2

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    flips = torch.rand(n, spatial, generator=generator) < 0.5 * min(strength, 1.0)
    angle = uniform(n) * math.radians(MAX_ROTATION_DEG) * strength
    shift = uniform(n, spatial) * 2 * MAX_SHIFT_FRACTION * strength
    gain = 1 + torch.randn(n, generator=generator) * GAIN_STD * strength
    offset = torch.randn(n, generator=generator) * OFFSET_STD * strength
    # Drawn only when asked for, so that the default draws (and runs) stay as they were.
    if quarter_turns:
        angle = angle + torch.randint(0, 4, (n,), generator=generator) * (math.pi / 2)

    # Affine in normalised coordinates; grid axes are (x, y[, z]) = last axes first.
    theta = torch.zeros(n, spatial, spatial + 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    if spatial == 3:
        theta[:, 2, 2] = 1.0
    sign = torch.where(flips, -1.0, 1.0).flip(1)  # flips are given in (z, y, x) order
    theta[:, :, :spatial] *= sign.unsqueeze(1)
    theta[:, :, spatial] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    jittered = moved * gain.view(-1, *[1] * (x.ndim - 1)) + offset.view(-1, *[1] * (x.ndim - 1))
    return jittered.clamp(0.0, 1.0)
