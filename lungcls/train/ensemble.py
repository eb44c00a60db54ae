"""The network of a cross-validated model: the fold models' logits, averaged.

One `nn.Module` like any other model, so evaluation, prediction, saliency and the
TorchScript copy for serving need nothing special: `model(x)` is the mean logit of the
members (averaging logits rather than probabilities keeps one sigmoid at the end, as a
single network has).
"""

from __future__ import annotations

import torch
from torch import nn

from lungcls.config import ModelSettings
from lungcls.train.models import build_model


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' penultimate layers side by side, (N, members x channels). Not their
        mean: each member was initialised from its own seed and trained on its own folds,
        so channel k of one member has nothing to do with channel k of another; a mean
        would mix unrelated units (a fixed projection of this concatenation, which a
        linear domain classifier can learn anyway if it helps)."""
        return torch.cat([member.features(x) for member in self.members], dim=1)


def build_network(
    settings: ModelSettings, tensor_shape: list[int], seed: int, members: int = 1
) -> nn.Module:
    """A model's network: one CNN, or an `Ensemble` of `members` of them."""
    if members == 1:
        return build_model(settings, tensor_shape, seed)
    return Ensemble([build_model(settings, tensor_shape, seed + k) for k in range(members)])
