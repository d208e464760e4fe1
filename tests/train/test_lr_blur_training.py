"""A generator told its LR's blur, end to end: config checks, training (resident, per-item and simulated
sources, GAN phase), evaluate, the Python API, `hpc-sr upscale --lr-blur` and the ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hpc_sr
from hpc_sr.apps.evaluate import EvaluateError, evaluate
from hpc_sr.config import ConfigError, load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import HpcSrError
from hpc_sr.train.components import check_config
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides

TOLD = {"model.g.lr_blur_input": "true", "data.lr_blur": "data"}


@pytest.fixture(scope="module")
def told_run(tiny_randomized: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 steps (2 pretrain, 2 GAN) on the resident loader, the exact layer on the block-mean pairs."""
    runs = tmp_path_factory.mktemp("told_runs")
    over = tiny_overrides(tiny_randomized, runs, name="told", steps=4, pretrain=2, **TOLD,
                          **{"data.options.loader": "memory", "model.g.lr_consistent": "true",
                             "train.val_every": 2, "train.ckpt_every": 2})  # fmt: skip
    assert Trainer(load_config(None, over), DistEnv(), torch.device("cpu")).run() == 0
    return runs / "told"


def test_input_and_data_setting_go_together(tiny_randomized: Path, tmp_path: Path) -> None:
    def check(**extra: str) -> None:
        check_config(load_config(None, tiny_overrides(tiny_randomized, tmp_path, **extra)))

    with pytest.raises(ConfigError, match="model.g.lr_blur_input=true needs .*data.lr_blur=data"):
        check(**{"model.g.lr_blur_input": "true"})
    with pytest.raises(ConfigError, match="data.lr_blur='data' is an input .*model.g.lr_blur_input=true"):
        check(**{"data.lr_blur": "data"})
    with pytest.raises(ConfigError, match="data.lr_blur='-3'"):
        check(**{**TOLD, "data.lr_blur": "-3"})
    # the exact layer is refused on data whose LR is not (always) the mean, unless the generator is told
    with pytest.raises(ConfigError, match="model.g.lr_consistent=true assume"):
        check(**{"model.g.lr_consistent": "true"})
    check(**TOLD, **{"model.g.lr_consistent": "true"})


def test_told_run_trains_validates_and_evaluates(told_run: Path, tiny_randomized: Path) -> None:
    assert (told_run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    res = evaluate(told_run, tiny_randomized, split="test", quiet=True)
    assert res["lr_blur"] == "data" and res["n"] == 4
    assert np.isfinite(res["model"]["psnr"])
    const = evaluate(told_run, tiny_randomized, split="test", quiet=True, lr_blur=3.0)
    assert const["lr_blur"] == 3.0 and const["model"]["psnr"] != res["model"]["psnr"]


def test_item_loader_and_simulated_source_train_a_told_generator(
    tiny_randomized: Path, tmp_path: Path
) -> None:
    for name, extra in (("item", {"data.options.loader": "item"}),
                        ("sim", {"data.source": "simulate", "data.path": "",
                                 "data.options": "{preset: randomized, hr_size: 32}"})):  # fmt: skip
        over = tiny_overrides(tiny_randomized, tmp_path, name=name, steps=2, pretrain=2, **TOLD, **extra)
        assert Trainer(load_config(None, over), DistEnv(), torch.device("cpu")).run() == 0
        assert (tmp_path / name / "checkpoints" / "latest").is_file()


def test_simulated_batches_carry_each_pairs_blur() -> None:
    from hpc_sr.config import DataConfig
    from hpc_sr.data.streams import make_train_stream

    data = DataConfig(source="simulate", options={"preset": "ground_space", "hr_size": 32}, batch_size=4,
                      patch_size=8, lr_blur="data")  # fmt: skip
    lr, hr = next(make_train_stream(data, 0, DistEnv(), torch.device("cpu"), 4))
    assert lr.shape == (4, 2, 8, 8) and hr.shape == (4, 1, 16, 16)
    blur = lr[:, 1]
    assert (blur > 0).all() and (blur == blur[:, :1, :1]).all()  # ground-based seeing, constant per pair


def test_evaluate_refuses_a_blur_for_a_plain_generator(tiny_shards: Path) -> None:
    with pytest.raises(EvaluateError, match="--lr-blur 1.0: this generator does not take"):
        evaluate("deeplense-small", tiny_shards, quiet=True, limit=2, lr_blur=1.0)


def test_api_and_cli_upscale_need_the_blur(told_run: Path, tmp_path: Path) -> None:
    g = hpc_sr.load_generator(told_run)
    lr = np.random.default_rng(0).random((2, 12, 12), dtype=np.float32)
    with pytest.raises(ValueError, match="pass lr_blur="):
        hpc_sr.upscale(g, lr)
    sharp, blurred = hpc_sr.upscale(g, lr, lr_blur=[0.0, 2.0]), hpc_sr.upscale(g, lr, lr_blur=2.0)
    assert sharp.shape == (2, 24, 24)
    np.testing.assert_allclose(sharp[1], blurred[1], atol=1e-6)
    with pytest.raises(ValueError, match="this one is not"):
        hpc_sr.upscale(hpc_sr.load_generator("deeplense-small"), lr, lr_blur=1.0)

    from hpc_sr.apps.upscale import upscale_paths

    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", lr[1])
    with pytest.raises(HpcSrError, match="give --lr-blur FWHM"):
        upscale_paths(g, [str(tmp_path / "in")], tmp_path / "none", scale=2)
    (out,) = upscale_paths(g, [str(tmp_path / "in")], tmp_path / "out", scale=2, lr_blur=2.0,
                           normalize="none")  # fmt: skip
    np.testing.assert_allclose(np.load(out), blurred[1], atol=1e-5)


def test_onnx_export_takes_the_blur_channel(told_run: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from hpc_sr.apps.export import export_model
    from hpc_sr.imaging import with_lr_blur

    g = hpc_sr.load_generator(told_run)
    export_model(g, tmp_path / "g.onnx", "onnx", {})
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = with_lr_blur(torch.rand(2, 1, 9, 11), torch.tensor([0.0, 2.5]))
    with torch.no_grad():
        ref = g(x).numpy()
    np.testing.assert_allclose(sess.run(["sr"], {"lr": x.numpy()})[0], ref, atol=1e-4)


def test_the_ledger_records_the_blur_and_old_ledgers_resume(told_run: Path, tmp_path: Path) -> None:
    """A rerun with another --lr-blur is refused (the outputs would differ); a folder begun before the blur
    was recorded (no options.lr_blur) resumes as a run without it."""
    import json

    from hpc_sr.apps.inference.formats import InferenceOptions
    from hpc_sr.apps.inference.ledger import LEDGER_DIR, RUN_FILE
    from hpc_sr.apps.inference.runner import execute
    from hpc_sr.errors import LedgerError

    (tmp_path / "in").mkdir()
    for k in range(2):
        np.save(tmp_path / "in" / f"c{k}.npy", np.random.default_rng(k).random((12, 12), dtype=np.float32))

    def run(g: torch.nn.Module, out: Path, **kw: object) -> int:
        opts = InferenceOptions(normalize="none", **kw)  # type: ignore[arg-type]
        return execute(g, None, [str(tmp_path / "in")], out, opts, progress=False).status

    told = hpc_sr.load_generator(told_run)
    assert run(told, tmp_path / "told", lr_blur=2.0) == 0
    with pytest.raises(LedgerError, match=r"options\.lr_blur \(was 2\.0, now 1\.0\)"):
        run(told, tmp_path / "told", lr_blur=1.0)
    plain = hpc_sr.load_generator("deeplense-small")
    assert run(plain, tmp_path / "plain") == 0
    record = tmp_path / "plain" / LEDGER_DIR / RUN_FILE
    fp = json.loads(record.read_text())
    del fp["options"]["lr_blur"]
    record.write_text(json.dumps(fp))
    assert run(plain, tmp_path / "plain") == 0
