"""The networks' penultimate layer (`features`, what drift monitoring compares) in 2D and
3D, one CNN and a cross-validated ensemble: its width, that the logit is computed from it,
and that the TorchScript copy for serving (traced `forward`) still gives the eager output
from the same stored weights; test-time flips: the mean over every flipped view, so a flipped
input scores the same."""

from __future__ import annotations

import io
from itertools import combinations

import pytest
import torch

from lungcls.config import ModelSettings
from lungcls.registry.store import serialise_model
from lungcls.train.ensemble import Ensemble, FlipAveraged, build_network

SETTINGS = ModelSettings(width=4, depth=2, dropout=0.5)
CHANNELS = SETTINGS.width * 2 ** (SETTINGS.depth - 1)  # the last stage's width


@pytest.mark.parametrize("shape", [[2, 16, 16], [1, 8, 16, 16]], ids=["2d", "3d"])
@pytest.mark.parametrize("members", [1, 3])
def test_features_are_what_the_logit_is_computed_from(shape: list[int], members: int) -> None:
    model = build_network(SETTINGS, shape, seed=3, members=members).eval()
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features, logits = model.features(x), model(x)
    assert features.shape == (5, members * CHANNELS) and logits.shape == (5,)
    assert not torch.allclose(features[0], features[1])
    # The ensemble's members side by side, in order; each one's logit is its linear layer
    # on its block (dropout is the identity in eval mode).
    nets = model.members if isinstance(model, Ensemble) else [model]
    blocks = features.split(CHANNELS, dim=1)
    with torch.no_grad():
        member_logits = [
            net.head[-1](block).squeeze(1) for net, block in zip(nets, blocks, strict=True)
        ]
    assert torch.allclose(torch.stack(member_logits).mean(dim=0), logits, atol=1e-6)


@pytest.mark.parametrize("members", [1, 2])
def test_the_traced_copy_matches_the_eager_network_and_the_weights_keep_their_names(
    members: int,
) -> None:
    shape = [1, 8, 16, 16]
    model = build_network(SETTINGS, shape, seed=5, members=members)
    prefix = "members.0." if members > 1 else ""
    # Models stored before `features` existed load unchanged: same parameter names.
    assert {f"{prefix}head.3.weight", f"{prefix}stem.0.weight"} <= set(model.state_dict())
    files = serialise_model(model, shape)
    traced = torch.jit.load(io.BytesIO(files["model.ts"]))
    loaded = build_network(SETTINGS, shape, seed=0, members=members)
    loaded.load_state_dict(torch.load(io.BytesIO(files["model.pt"]), weights_only=True))
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(traced(x), loaded.eval()(x), atol=1e-5)


@pytest.mark.parametrize("shape", [[2, 16, 16], [1, 8, 16, 16]], ids=["2d", "3d"])
def test_flip_averaged_scores_are_the_mean_over_flips_and_the_same_for_a_flipped_input(
    shape: list[int],
) -> None:
    settings = SETTINGS.model_copy(update={"test_time_flips": True})
    model = build_network(settings, shape, seed=7, members=2).eval()
    assert isinstance(model, FlipAveraged) and isinstance(model.network, Ensemble)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2))
    spatial = list(range(2, len(shape) + 1))
    flips = [list(c) for n in range(len(spatial) + 1) for c in combinations(spatial, n)]
    with torch.no_grad():
        logits, plain = model(x), model.network(x)
        views = torch.stack([model.network(x.flip(dims)) for dims in flips])
        assert len(flips) == 2 ** len(spatial) and torch.allclose(logits, views.mean(0), atol=1e-6)
        assert not torch.allclose(plain, logits, atol=1e-4)  # the views do differ
        # Every flip of the input is one of the averaged views: its score does not change.
        for dims in flips:
            assert torch.allclose(model(x.flip(dims)), logits, atol=1e-5)
    files = serialise_model(model, shape)
    traced = torch.jit.load(io.BytesIO(files["model.ts"]))
    loaded = build_network(settings, shape, seed=0, members=2)
    loaded.load_state_dict(torch.load(io.BytesIO(files["model.pt"]), weights_only=True))
    with torch.no_grad():
        assert torch.allclose(traced(x), logits, atol=1e-5)
        assert torch.allclose(loaded.eval()(x), logits, atol=1e-6)


def test_an_ensemble_averages_standardised_logits_and_old_ensembles_load_as_before() -> None:
    settings = SETTINGS
    network = build_network(settings, [1, 16, 16], seed=1, members=2).eval()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = [member(x) for member in network.members]
        assert torch.allclose(network(x), (raw[0] + raw[1]) / 2, atol=1e-6)  # identity
        network.offsets.copy_(torch.tensor([1.0, -2.0]))
        network.scales.copy_(torch.tensor([2.0, 0.5]))
        expected = ((raw[0] - 1.0) / 2.0 + (raw[1] + 2.0) / 0.5) / 2
        assert torch.allclose(network(x), expected, atol=1e-5)
        # A state dict saved before members were standardised has no offsets or scales.
        old = {k: v for k, v in network.state_dict().items() if k not in ("offsets", "scales")}
        loaded = build_network(settings, [1, 16, 16], seed=9, members=2).eval()
        loaded.load_state_dict(old)
        assert torch.allclose(loaded(x), (raw[0] + raw[1]) / 2, atol=1e-6)
