"""Grad-CAM saliency for the ResNet classifier, as PNG overlays on the input patch.

Grad-CAM weights the last stage's feature maps by the mean gradient of the malignancy logit
and keeps the positive part: where the evidence for "malignant" sits. It shows what the
model looked at, not why a nodule is malignant; read it as a sanity check.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from lungcls.train.models import ResNetClassifier


def grad_cam(model: ResNetClassifier, x: torch.Tensor) -> np.ndarray:
    """A map in [0, 1] with the spatial shape of one input sample `x` (1, C, ...)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        captured["maps"] = output

    handle = model.stages.register_forward_hook(keep)
    try:
        model.zero_grad(set_to_none=True)
        model(x.requires_grad_(False)).sum().backward()
    finally:
        handle.remove()
    maps, grads = captured["maps"], captured["maps"].grad
    assert grads is not None
    spatial = tuple(range(2, maps.ndim))
    weights = grads.mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * maps).sum(dim=1, keepdim=True))
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    cam = F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)[0, 0]
    cam = cam.detach().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def overlay_png(sample: np.ndarray, cam: np.ndarray, title: str) -> bytes:
    """The central axial slice of channel 0 with the saliency map over it, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = sample[0] if sample.ndim == 3 else sample[0, sample.shape[1] // 2]
    heat = cam if cam.ndim == 2 else cam[cam.shape[0] // 2]
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.imshow(image, cmap="gray", vmin=0, vmax=1)
    axis.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
