"""Non-finite gradients from a finite loss (sqrt at 0) skip the update instead of writing NaN weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.train.backends.ddp import DDPBackend
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_infinite_gradient_with_a_finite_loss_leaves_the_weights_alone(
    tmp_path: Path, grad_clip: float
) -> None:
    cfg = load_config(None, tiny_overrides(None, tmp_path, **{"train.grad_clip": grad_clip}))
    backend = DDPBackend(cfg, torch.device("cpu"), world_size=1)
    model = torch.nn.Linear(3, 1)
    backend.add("g", model, lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = torch.sqrt(model(torch.zeros(2, 3)).mul(0.0).abs()).sum()  # finite (0), gradient inf
    assert torch.isfinite(loss)
    backend.backward("g", loss, last_micro=True)
    norm = backend.step("g")
    assert not torch.isfinite(norm)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no NaN written, no update
    # a finite step afterwards trains as usual
    backend.zero_grad("g")
    backend.backward("g", (model(torch.ones(2, 3)) - 1).pow(2).mean(), last_micro=True)
    assert torch.isfinite(backend.step("g"))
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], model.state_dict()[k]) for k in before)
