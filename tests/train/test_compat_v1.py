"""Files written by v1 (flat SRResNet config keys, exported G.pt format 1) still load, build and resume.

tests/fixtures/v1/ was written by the v1 code (commit 6de5b4c): a 4-channel x 1-block SRResNet + SRGAN D
trained
3 steps (checkpoint step_00000003, its config.yaml) and the exported EMA generator G.pt, with reference
outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.models.artifacts import load_generator
from hpc_sr.models.srresnet import SRResNet
from hpc_sr.train.trainer import Trainer

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1"


def test_v1_config_file_migrates_with_a_warning() -> None:
    with pytest.warns(FutureWarning, match="model.channels"):
        cfg = load_config(V1 / "config.yaml")
    assert cfg.model.g.arch == "srresnet" and cfg.model.g.options == {
        "channels": 4,
        "blocks": 1,
        "batch_norm": False,
        "res_scale": 0.1,
    }
    assert cfg.model.d.options == {"channels": 4, "blocks": 1, "spectral_norm": False}
    terms = {t["term"]: t for t in cfg.train.losses}
    assert terms["pixel"]["kind"] == "mse" and terms["flux"]["weight"] == pytest.approx(0.1)


@pytest.mark.parametrize("source", ["G.pt", "step_00000003"])
def test_v1_generator_files_load_and_reproduce_outputs(source: str) -> None:
    ref = np.load(V1 / "reference_outputs.npz")
    with pytest.warns(FutureWarning):
        g, payload = load_generator(V1 / source)
    assert isinstance(g, SRResNet) and payload["scale"] == 2
    with torch.no_grad():
        out = g(torch.from_numpy(ref["lr"])).numpy()
    np.testing.assert_allclose(out, ref["sr_exported" if source == "G.pt" else "sr_checkpoint"], atol=1e-6)


def test_v1_checkpoint_resumes_under_v2(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "v1"
    shutil.copytree(V1 / "step_00000003", run / "checkpoints" / "step_00000003")
    (run / "checkpoints" / "latest").write_text("step_00000003\n")
    overrides = [
        f"data.path={tiny_shards}",
        f"log.runs_dir={tmp_path / 'runs'}",
        "log.name=v1",
        "train.steps=4",
        "log.tensorboard=false",
    ]
    with pytest.warns(FutureWarning):
        cfg = load_config(V1 / "config.yaml", overrides)
        trainer = Trainer(cfg, DistEnv(), torch.device("cpu"), resume="auto")
    assert trainer.step == 3
    assert trainer.run() == 0
    assert (run / "checkpoints" / "step_00000004").is_dir()
