"""Self-ensemble: the 8 dihedral transforms are applied and undone (on a model that is not equivariant)."""

from __future__ import annotations

import torch

from hpc_sr.models.ensemble import self_ensemble
from hpc_sr.models.registry import GeneratorCommon, build_generator


def _asymmetric_model() -> torch.nn.Module:
    torch.manual_seed(0)
    g = build_generator("srresnet", {"channels": 4, "blocks": 1}, 2, GeneratorCommon(bicubic_skip=False))
    return g.eval()


def test_ensemble_equals_the_mean_of_transformed_outputs() -> None:
    g = _asymmetric_model()
    lr = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        expected = []
        for k in range(4):
            for flip in (False, True):
                x = torch.rot90(lr, k, (-2, -1))
                x = x.flip(-1) if flip else x
                y = g(x)
                y = y.flip(-1) if flip else y
                expected.append(torch.rot90(y, -k, (-2, -1)))
        ens = self_ensemble(g, lr)
    torch.testing.assert_close(ens, torch.stack(expected).mean(0))
    assert (ens - g(lr)).abs().max() > 1e-4  # the transforms matter for a non-equivariant model


def test_ensemble_is_equivariant_by_construction() -> None:
    g = _asymmetric_model()
    lr = torch.rand(1, 1, 6, 6)
    with torch.no_grad():
        a = self_ensemble(g, torch.rot90(lr, 1, (-2, -1)))
        b = torch.rot90(self_ensemble(g, lr), 1, (-2, -1))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
