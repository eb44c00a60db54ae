"""The network a model version publishes: one CNN, or the fold models' logits averaged, and
optionally each input's logit averaged over its flips (test-time augmentation).

Each is one `nn.Module` like any other model, so evaluation, prediction, saliency and the
TorchScript copy for serving need nothing special: `model(x)` is the mean logit of the
members and views (averaging logits rather than probabilities keeps one sigmoid at the end,
as a single network has).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from lungcls.config import ModelSettings
from lungcls.train.models import build_model


class Ensemble(nn.Module):
    """The mean of the members' standardised logits, `(logit_k - offsets[k]) / scales[k]`.

    Why standardised: fold models trained alike still put their logits on different
    scales (on IQ-OTH/NCCD one fold's held-out logits averaged +2.9 while the others' were
    -1.7 to -0.3, with spreads from 1.0 to 3.1); a plain mean lets the widest member
    dominate, and out-of-fold scores pooled from such members rank patients of different
    folds against each other wrongly (pooled AUC 0.81 where every fold had 0.86-0.98).
    `offsets`/`scales` are each member's logit mean and spread on its own held-out patients
    (`folds.standardise`: no labels used), so pooled out-of-fold scores and the published
    mean are on one scale. Identity (0, 1) unless given.
    """

    def __init__(
        self,
        members: list[nn.Module],
        offsets: list[float] | None = None,
        scales: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        count = len(members)
        self.register_buffer("offsets", torch.tensor(offsets or [0.0] * count))
        self.register_buffer("scales", torch.tensor(scales or [1.0] * count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members])
        return ((logits - self.offsets[:, None]) / self.scales[:, None]).mean(dim=0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Ensembles published before members were standardised load as the identity.
        for name, value in (("offsets", 0.0), ("scales", 1.0)):
            state_dict.setdefault(prefix + name, torch.full((len(self.members),), value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' penultimate layers side by side, (N, members x channels). Not their
        mean: each member was initialised from its own seed and trained on its own folds,
        so channel k of one member has nothing to do with channel k of another; a mean
        would mix unrelated units (a fixed projection of this concatenation, which a
        linear domain classifier can learn anyway if it helps)."""
        return torch.cat([member.features(x) for member in self.members], dim=1)


class FlipAveraged(nn.Module):
    """`network`'s logit averaged over every combination of flips of the spatial axes: the
    input itself and 3 flipped views in 2D, 7 in 3D. Why: a nodule or a slice flipped is
    still the same case, and training flips at random (`augment`), so the views are ones the
    network knows; their mean is steadier than any one (`model.test_time_flips`)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = range(2, x.ndim)
        views = [list(c) for n in range(x.ndim - 1) for c in itertools.combinations(spatial, n)]
        return torch.stack([self.network(x.flip(dims) if dims else x) for dims in views]).mean(0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The unflipped input's penultimate layer (what monitoring compares)."""
        return self.network.features(x)


def for_inference(settings: ModelSettings, network: nn.Module) -> nn.Module:
    """`network` as it scores: wrapped in `FlipAveraged` when `settings.test_time_flips`."""
    return FlipAveraged(network) if settings.test_time_flips else network


def build_network(
    settings: ModelSettings, tensor_shape: list[int], seed: int, members: int = 1
) -> nn.Module:
    """A model version's network: one CNN, or an `Ensemble` of `members` of them, as it
    scores (`for_inference`)."""
    if members == 1:
        network = build_model(settings, tensor_shape, seed)
    else:
        network = Ensemble([build_model(settings, tensor_shape, seed + k) for k in range(members)])
    return for_inference(settings, network)
