"""The training loop in one process: logs, checkpoints, exact resume, NaN handling, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import CheckpointError, TrainingError
from hpc_sr.train.faults import NAN_STEPS as FAULT_NAN_STEPS
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides


def make_trainer(overrides: list[str], resume: str = "auto") -> Trainer:
    return Trainer(load_config(None, overrides), DistEnv(), torch.device("cpu"), resume=resume)


def read_jsonl(run_dir: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def test_gan_run_writes_config_metrics_checkpoints_and_tensorboard(tiny_shards: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_overrides(tiny_shards, tmp_path, steps=6, pretrain=3))
    assert trainer.run() == 0
    run = tmp_path / "tiny"
    assert load_config(run / "config.yaml").train.steps == 6  # resolved config saved and reloadable
    train_rows = read_jsonl(run, "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert {r["phase"] for r in train_rows} == {"pretrain", "gan"}
    gan_row = train_rows[-1]
    assert {
        "loss_g_pixel",
        "loss_g_adversarial",
        "loss_d",
        "images_per_s",
        "data_wait_share",
        "peak_mem_mb",
    } <= set(gan_row)
    val = read_jsonl(run, "val")
    assert [r["step"] for r in val] == [3, 6]
    assert val[-1]["model"]["n"] == val[-1]["bicubic"]["n"] == 5
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000003", "step_00000006"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {"train/loss_g_pixel", "val/psnr", "val_bicubic/psnr", "train/images_per_s"} <= set(
        acc.Tags()["scalars"]
    )
    assert "val/comparison" in acc.Tags()["images"]


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_equals_uninterrupted_run(tiny_shards: Path, tmp_path: Path, workers: int) -> None:
    common = dict(
        steps=8,
        pretrain=4,
        **{
            "train.deterministic": "true",
            "data.num_workers": workers,
            "train.ckpt_every": 4,
            "train.val_every": 100,
        },
    )
    straight = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="straight", **common), resume="never")
    assert straight.run() == 0
    first = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="split", **{**common, "steps": 4}))
    assert first.run() == 0
    second = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="split", **common), resume="auto")
    assert second.step == 4
    assert second.run() == 0

    def losses(name: str) -> list[tuple[int, float, float]]:
        rows = read_jsonl(tmp_path / name, "train")
        return [(r["step"], r["loss_g_pixel"], r.get("loss_d", 0.0)) for r in rows]

    assert losses("straight") == losses("split")  # bit-identical losses, GAN phase included
    for name in ("g", "d"):
        a = straight.backend.module(name).state_dict()
        b = second.backend.module(name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(
        torch.equal(x, y)
        for x, y in zip(straight.ema.module.state_dict().values(), second.ema.module.state_dict().values())
    )


def test_injected_nan_is_skipped_and_counted(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_NAN_STEPS, "2,3")
    trainer = make_trainer(tiny_overrides(tiny_shards, tmp_path, steps=5, pretrain=5))
    before = {k: v.clone() for k, v in trainer.backend.module("g").state_dict().items()}
    assert trainer.run() == 0
    skips = read_jsonl(tmp_path / "tiny", "skip")
    assert [r["step"] for r in skips] == [2, 3]
    assert read_jsonl(tmp_path / "tiny", "train")[-1]["skipped_total"] == 2
    after = trainer.backend.module("g").state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_k_nonfinite_losses_in_a_row_stop_the_run_naming_the_step(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_NAN_STEPS, "2,3,4")
    trainer = make_trainer(
        tiny_overrides(tiny_shards, tmp_path, steps=6, pretrain=6, **{"train.max_bad_steps": 3})
    )
    with pytest.raises(TrainingError, match=r"3 consecutive non-finite losses.*step 4"):
        trainer.run()


def test_batch_size_not_divisible_by_accumulation_is_an_error(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"data.batch_size=4 .*grad_accum=3"):
        make_trainer(tiny_overrides(tiny_shards, tmp_path, **{"train.grad_accum": 3}))


def test_unwritable_run_dir_fails_before_training(tiny_shards: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the runs directory should be")
    with pytest.raises(TrainingError, match="not writable"):
        make_trainer(tiny_overrides(tiny_shards, blocker))


def test_gradient_accumulation_matches_one_big_batch(tiny_shards: Path, tmp_path: Path) -> None:
    kw = {
        "data.patch_size": 0,
        "data.augment": "false",
        "train.val_every": 100,
        "train.ckpt_every": 100,
        "train.ema_decay": 0.0,
        "train.deterministic": "true",
    }
    one = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="one", steps=2, pretrain=2, **kw), "never")
    acc = make_trainer(
        tiny_overrides(
            tiny_shards, tmp_path, name="acc", steps=2, pretrain=2, **{**kw, "train.grad_accum": 2}
        ),
        "never",
    )
    one.run()
    acc.run()
    for k, v in one.backend.module("g").state_dict().items():
        torch.testing.assert_close(acc.backend.module("g").state_dict()[k], v, rtol=1e-4, atol=1e-6)


def test_resume_refuses_a_checkpoint_of_another_model_config(tiny_shards: Path, tmp_path: Path) -> None:
    assert make_trainer(tiny_overrides(tiny_shards, tmp_path, steps=3, pretrain=3)).run() == 0
    with pytest.raises(CheckpointError, match=r"model\.g\.options\.channels: checkpoint 8 vs config 16"):
        make_trainer(
            tiny_overrides(tiny_shards, tmp_path, steps=6, pretrain=6, **{"model.g.options.channels": 16})
        )


def test_checkpoint_with_pickled_objects_is_refused(tiny_shards: Path, tmp_path: Path) -> None:
    assert make_trainer(tiny_overrides(tiny_shards, tmp_path, steps=3, pretrain=3)).run() == 0
    ckpt = tmp_path / "tiny" / "checkpoints" / "step_00000003" / "trainer.pt"
    state = torch.load(ckpt, weights_only=True)
    state["evil"] = Path("/etc/passwd")  # an arbitrary object: only a full unpickler would rebuild it
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="weights_only"):
        make_trainer(tiny_overrides(tiny_shards, tmp_path, steps=6, pretrain=6))


def test_keep_last_and_best_are_kept(tiny_shards: Path, tmp_path: Path) -> None:
    trainer = make_trainer(
        tiny_overrides(
            tiny_shards, tmp_path, steps=12, pretrain=12, **{"train.keep_last": 1, "train.ckpt_every": 3}
        )
    )
    trainer.run()
    kept = sorted(p.name for p in (tmp_path / "tiny" / "checkpoints").glob("step_*"))
    metas = {p: json.loads((tmp_path / "tiny" / "checkpoints" / p / "meta.json").read_text()) for p in kept}
    assert "step_00000012" in kept and len(kept) <= 2
    best_step = max(read_jsonl(tmp_path / "tiny", "val"), key=lambda r: r["model"]["psnr"])["step"]
    assert f"step_{best_step:08d}" in kept
    assert all(m["val"]["psnr"] for m in metas.values())


def test_gan_stage_starts_from_an_srresnet_run_with_other_discriminator_settings(
    tiny_shards: Path, tmp_path: Path
) -> None:
    srresnet = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="srresnet", steps=3, pretrain=3))
    assert srresnet.run() == 0
    gan = make_trainer(
        tiny_overrides(
            tiny_shards,
            tmp_path,
            name="gan",
            steps=2,
            pretrain=0,
            **{"train.init_g": str(tmp_path / "srresnet"), "model.d.options.channels": 4},
        ),
        resume="never",
    )
    start = gan.backend.module("g").state_dict()
    assert all(torch.equal(start[k], v) for k, v in srresnet.ema.module.state_dict().items())
    assert gan.run() == 0
    with pytest.raises(CheckpointError, match=r"model\.g\.options\.channels: checkpoint 8 vs config 16"):
        make_trainer(
            tiny_overrides(
                tiny_shards,
                tmp_path,
                name="bad",
                **{"train.init_g": str(tmp_path / "srresnet"), "model.g.options.channels": 16},
            ),
            resume="never",
        )
