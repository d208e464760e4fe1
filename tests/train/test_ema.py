"""The EMA of the generator: parameters and buffers, in float32."""

from __future__ import annotations

import torch

from hpc_sr.train.ema import ModelEMA


def test_ema_tracks_parameters_and_buffers_in_float32() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).bfloat16()
    ema = ModelEMA(model, decay=0.5)
    assert all(v.dtype in (torch.float32, torch.int64) for v in ema.module.state_dict().values())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
    before = ema.module.state_dict()["0.weight"].clone()
    ema.update(model)
    decay = min(0.5, 2 / 11)
    expected = before * decay + model.state_dict()["0.weight"].float() * (1 - decay)
    torch.testing.assert_close(ema.module.state_dict()["0.weight"], expected)
    assert ema.module.state_dict()["1.running_mean"].abs().sum() > 0  # buffers averaged too
    assert ema.module.state_dict()["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"]
