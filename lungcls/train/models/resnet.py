"""A small ResNet for nodule classification, in 2D (slices) or 3D (patches).

A strided stem convolution (half resolution: the cheapest place to save compute on CPU),
then `depth` stages of `blocks_per_stage` residual blocks; each stage after the first
halves the resolution again and doubles the width. Global average pooling,
dropout, one logit (malignant vs not). Batch norm is replaced by group norm: batches are
small on CPU and per-worker in DDP, where batch statistics are noisy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lungcls.config import ModelSettings


def _layers(dims: int) -> tuple[type[nn.Module], type[nn.Module]]:
    return (nn.Conv3d, nn.AdaptiveAvgPool3d) if dims == 3 else (nn.Conv2d, nn.AdaptiveAvgPool2d)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResidualBlock(nn.Module):
    def __init__(self, dims: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        conv, _ = _layers(dims)
        self.body = nn.Sequential(
            conv(cin, cout, 3, stride=stride, padding=1, bias=False),
            _norm(cout),
            nn.ReLU(inplace=True),
            conv(cout, cout, 3, padding=1, bias=False),
            _norm(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), _norm(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class ResNetClassifier(nn.Module):
    """Input (N, C, D, H, W) in 3D or (N, C, H, W) in 2D; output one logit per sample."""

    def __init__(
        self, dims: int, in_channels: int, width: int, depth: int, blocks: int, dropout: float
    ) -> None:
        super().__init__()
        conv, pool = _layers(dims)
        self.stem = nn.Sequential(
            conv(in_channels, width, 3, stride=2, padding=1, bias=False),
            _norm(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        channels = width
        for stage in range(depth):
            out = width * 2**stage
            for block in range(blocks):
                stride = 2 if block == 0 and stage > 0 else 1
                stages.append(ResidualBlock(dims, channels, out, stride))
                channels = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            pool(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, 1)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer, (N, channels): the pooled features the final linear layer
        weighs (before dropout, which is the identity in eval mode). Drift monitoring
        compares them; `forward` is built on them, so they are what the logit sees."""
        return self.head[:2](self.stages(self.stem(x)))  # pool, flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[2:](self.features(x)).squeeze(1)  # dropout, linear


def build_model(
    settings: ModelSettings, tensor_shape: Sequence[int], seed: int
) -> ResNetClassifier:
    """A model for samples of `tensor_shape` (without the batch axis), initialised from `seed`."""
    dims = len(tensor_shape) - 1
    if dims not in (2, 3):
        raise ValueError(
            f"tensor shape {tuple(tensor_shape)} is neither (C, H, W) nor (C, D, H, W)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNetClassifier(
            dims,
            tensor_shape[0],
            settings.width,
            settings.depth,
            settings.blocks_per_stage,
            settings.dropout,
        )
