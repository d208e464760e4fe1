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


def test_model_ensemble_is_the_mean_and_keeps_lr_consistency() -> None:
    import pytest
    import torch.nn.functional as F

    from hpc_sr.models.ensemble import ModelEnsemble
    from hpc_sr.models.registry import generator_from_spec, generator_spec

    cfg = {"arch": "srresnet", "options": {"channels": 4, "blocks": 1}, "lr_consistent": True}
    spec = generator_spec(cfg)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        g = generator_from_spec(spec, 2).eval()
        with torch.no_grad():  # the zero-initialised tail would make every member the bicubic skip
            for p in g.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        members.append(g)
    lr = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        a, b = members[0](lr), members[1](lr)
        out = ModelEnsemble(members)(lr)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(out, (a + b) / 2)
    torch.testing.assert_close(F.avg_pool2d(out, 2), lr, atol=1e-6, rtol=0)  # LR-consistent as its members
    with pytest.raises(ValueError, match="at least 2 members"):
        ModelEnsemble(members[:1])
    noisy = generator_from_spec(generator_spec({"arch": "srresnet", "options": {"channels": 4, "blocks": 1},
                                                "noise_channels": 1}), 2)  # fmt: skip
    with pytest.raises(ValueError, match=r"members \[1\] are stochastic"):
        ModelEnsemble([members[0], noisy])
