"""The training loop in one process: logs, checkpoints, exact resume, NaN handling, bad configs."""

from __future__ import annotations

import json
import re
import shutil
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


SPLIT, END = 5, 10  # the split run saves mid-epoch 0 (9 micro-batches of 4 per epoch); step 10 is in epoch 1


@pytest.mark.parametrize(
    "loader,workers",
    [("item", 0), ("item", 2), ("block", 0), ("memory", 0)],
    ids=["item", "item-2workers", "block", "memory"],
)
def test_exact_resume_equals_uninterrupted_run(
    tiny_shards: Path, tmp_path: Path, loader: str, workers: int
) -> None:
    common = dict(
        steps=END,
        pretrain=4,
        **{
            "train.deterministic": "true",
            "data.options.loader": loader,
            "data.options.block_size": 8,
            "data.options.num_workers": workers,
            "train.ckpt_every": SPLIT,
            "train.val_every": 100,
        },
    )
    straight = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="straight", **common), resume="never")
    assert straight.run() == 0
    first = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="split", **{**common, "steps": SPLIT}))
    assert first.run() == 0
    saved = tmp_path / "split" / "checkpoints" / f"step_{SPLIT:08d}"
    # mid-epoch: the resume must seek (item), replay SPLIT batches (block) or redraw (memory) to go on
    rank_state = torch.load(saved / "rng" / "rank_00000.pt", weights_only=True)
    assert rank_state["stream"] == {"epoch": 0, "position": SPLIT}
    second = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="split", **common), resume="auto")
    assert second.step == SPLIT and second.stream.state_dict() == {"epoch": 0, "position": SPLIT}
    assert second.run() == 0
    assert second.stream.state_dict()["epoch"] == 1  # the epoch boundary was crossed after the resume

    def losses(name: str) -> list[tuple[int, float, float]]:
        rows = read_jsonl(tmp_path / name, "train")
        return [(r["step"], r["loss_g_pixel"], r.get("loss_d", 0.0)) for r in rows]

    assert [r[0] for r in losses("split")] == list(range(1, END + 1))
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
    """grad_accum=2 x micro 2 == one batch of 4. The reported grad norm (pre-clip, clipping off) is the check
    that sees a missing or doubled 1/grad_accum: AdamW's update barely changes with the gradient scale."""
    kw = {
        "data.patch_size": 0,
        "data.augment": "false",
        "train.val_every": 100,
        "train.ckpt_every": 100,
        "train.ema_decay": 0.0,
        "train.deterministic": "true",
        "train.grad_clip": 0.0,
    }
    one = make_trainer(tiny_overrides(tiny_shards, tmp_path, name="one", steps=2, pretrain=2, **kw), "never")
    acc = make_trainer(
        tiny_overrides(
            tiny_shards, tmp_path, name="acc", steps=2, pretrain=2, **{**kw, "train.grad_accum": 2}
        ),
        "never",
    )
    assert one.micro == 4 and acc.micro == 2
    one.run()
    acc.run()
    rows_one, rows_acc = read_jsonl(tmp_path / "one", "train"), read_jsonl(tmp_path / "acc", "train")
    assert [r["step"] for r in rows_acc] == [1, 2]
    for a, b in zip(rows_one, rows_acc):  # measured: equal to 1e-7 relative (summation order only)
        assert b["grad_norm_g"] == pytest.approx(a["grad_norm_g"], rel=1e-6), (a["step"], a, b)
        assert b["loss_g_pixel"] == pytest.approx(a["loss_g_pixel"], rel=1e-6), (a["step"], a, b)
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


# -------------------------------------------------------------------------------------------- --resume PATH
@pytest.fixture(scope="module")
def source_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    runs = tmp_path_factory.mktemp("resume_source")
    trainer = make_trainer(
        tiny_overrides(tiny_shards, runs, name="src", steps=4, pretrain=4, **{"train.ckpt_every": 2})
    )
    assert trainer.run() == 0
    return runs / "src"


def copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest))


def test_cli_resume_from_a_step_dir_of_another_run(
    source_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    from hpc_sr.cli import main as cli_main

    step2 = source_run / "checkpoints" / "step_00000002"
    before = sorted(p.name for p in (source_run / "checkpoints").iterdir())
    overrides = tiny_overrides(tiny_shards, tmp_path, name="from_step", steps=3, pretrain=3)
    assert cli_main(["train", "--resume", str(step2), *overrides]) == 0
    run = tmp_path / "from_step"
    starts = read_jsonl(run, "start")
    assert [(s["step"], s["resumed_from"]) for s in starts] == [(2, str(step2))]
    assert [r["step"] for r in read_jsonl(run, "train")] == [3]  # continued at step 3, not restarted
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000003"]
    assert sorted(p.name for p in (source_run / "checkpoints").iterdir()) == before  # source untouched


def test_resume_from_a_run_dir_takes_its_latest_checkpoint(
    source_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    latest = source_run / "checkpoints" / "step_00000004"
    trainer = make_trainer(
        tiny_overrides(tiny_shards, tmp_path, name="from_run", steps=5, pretrain=5), resume=str(source_run)
    )
    assert trainer.step == 4 and trainer.resumed_from == latest
    saved = torch.load(latest / "trainer.pt", weights_only=True)["backend_state"]["g"]["model"]
    now = trainer.backend.module("g").state_dict()
    assert set(now) == set(saved) and all(torch.equal(now[k], saved[k]) for k in saved)


def test_resume_path_errors_name_the_path(source_run: Path, tiny_shards: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(tiny_shards, tmp_path, name="bad_resume", steps=5, pretrain=5)
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(
        CheckpointError, match=rf"--resume {re.escape(str(missing))}: not a complete checkpoint"
    ):
        make_trainer(overrides, resume=str(missing))
    incomplete = copy_run(source_run / "checkpoints" / "step_00000002", tmp_path / "step_00000002")
    (incomplete / "meta.json").unlink()  # as a save killed before its last file
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(incomplete))}: .*\(no meta\.json\)"):
        make_trainer(overrides, resume=str(incomplete))
    run = copy_run(source_run, tmp_path / "run_without_complete")
    for step_dir in (run / "checkpoints").glob("step_*"):
        (step_dir / "meta.json").unlink()
    where = re.escape(str(run / "checkpoints"))
    with pytest.raises(CheckpointError, match=rf"no complete checkpoint under {where}"):
        make_trainer(overrides, resume=str(run))


def test_cli_resume_error_is_exit_code_2_with_the_message(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpc_sr.cli import main as cli_main

    missing = tmp_path / "nowhere"
    overrides = tiny_overrides(tiny_shards, tmp_path, name="cli_bad", steps=2, pretrain=2)
    assert cli_main(["train", "--resume", str(missing), *overrides]) == 2
    err = capsys.readouterr().err
    assert f"hpc-sr train: error: --resume {missing}: not a complete checkpoint directory" in err
    assert not (tmp_path / "cli_bad" / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize(
    "change,message",
    [
        ({"format": "someone.else"}, "not an hpc_sr checkpoint"),
        ({"version": 99}, "checkpoint format version 99, this hpc_sr reads version 1"),
        ({"version": None}, "checkpoint format version None, this hpc_sr reads version 1"),
    ],
    ids=["format", "newer-version", "no-version"],
)
def test_trainer_file_of_another_format_or_version_is_refused_naming_it(
    source_run: Path, tiny_shards: Path, tmp_path: Path, change: dict, message: str
) -> None:
    run = copy_run(source_run, tmp_path / "src")
    trainer_pt = run / "checkpoints" / "step_00000004" / "trainer.pt"
    state = torch.load(trainer_pt, weights_only=True)
    state.update(change)
    torch.save(state, trainer_pt)
    overrides = tiny_overrides(tiny_shards, tmp_path, name="src", steps=6, pretrain=6)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(trainer_pt))}: {message}"):
        make_trainer(overrides)


def test_trainer_file_that_is_not_a_dict_is_refused(
    source_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    run = copy_run(source_run, tmp_path / "src")
    trainer_pt = run / "checkpoints" / "step_00000004" / "trainer.pt"
    torch.save(torch.zeros(3), trainer_pt)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(trainer_pt))}: not an hpc_sr checkpoint"):
        make_trainer(tiny_overrides(tiny_shards, tmp_path, name="src", steps=6, pretrain=6))


def test_resume_refuses_another_scale_naming_both(source_run: Path, tmp_path: Path) -> None:
    run = copy_run(source_run, tmp_path / "src")
    # simulated data at x4 (the shards are x2): the config is valid, only the checkpoint disagrees
    overrides = tiny_overrides(None, tmp_path, name="src", steps=6, pretrain=6, **{"data.scale": 4})
    with pytest.raises(CheckpointError, match=r"data\.scale: checkpoint 2 vs config 4") as err:
        make_trainer(overrides)
    assert str(run / "checkpoints" / "step_00000004") in str(err.value)


# ----------------------------------------------------------------------------------- loss terms, n_d, decay
SHORT = {
    "train.deterministic": "true",
    "train.val_every": 100,
    "train.ckpt_every": 100,
    "train.ema_decay": 0.0,
    "log.tensorboard": "false",
}


def short_run(
    data: Path, runs: Path, name: str, steps: int = 2, pretrain: int = 1, **extra: object
) -> Trainer:
    """A 2-step run (step 1 pixel phase, step 2 GAN) with the default terms pixel + adversarial."""
    trainer = make_trainer(
        tiny_overrides(data, runs, name=name, steps=steps, pretrain=pretrain, **{**SHORT, **extra}), "never"
    )
    assert trainer.run() == 0
    return trainer


def weights(trainer: Trainer, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.backend.module(name).state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def baseline(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    runs = tmp_path_factory.mktemp("baseline")
    trainer = short_run(tiny_shards, runs, "base")
    return {
        "rows": read_jsonl(runs / "base", "train"),
        "g": weights(trainer, "g"),
        "d": weights(trainer, "d"),
    }


@pytest.mark.parametrize("term", ["flux", "ssim", "lr_consistency"])
def test_pixel_phase_loss_term_is_weighted_logged_and_trains(
    term: str, baseline: dict, tiny_shards: Path, tmp_path: Path
) -> None:
    from hpc_sr.data.streams import make_train_stream
    from hpc_sr.models.losses import LossInputs, build_losses
    from hpc_sr.train.components import build_generator

    weight = 0.5
    trainer = short_run(tiny_shards, tmp_path, term, **{f"train.losses.{term}.weight": weight})
    rows = read_jsonl(tmp_path / term, "train")
    assert rows[0]["loss_g_pixel"] == baseline["rows"][0]["loss_g_pixel"]  # same data, same start
    # at step 1 G is bicubic (zero last layer): the logged term is weight x the term on the first batch
    cfg = trainer.cfg
    lr, hr = next(make_train_stream(cfg.data, cfg.train.seed, DistEnv(), torch.device("cpu"), trainer.micro))
    with torch.no_grad():
        sr = build_generator(cfg.model, cfg.data.scale)(lr)
    (spec,) = [t for t in build_losses(cfg.train.losses) if t.name == term]
    expected = weight * spec.term(LossInputs(sr=sr, hr=hr, lr=lr)).item()
    assert expected > 0 and rows[0][f"loss_g_{term}"] == pytest.approx(expected, rel=1e-5)
    assert all(f"loss_g_{term}" in r for r in rows)
    assert not same(weights(trainer, "g"), baseline["g"])  # the term changed G's updates


def test_feature_matching_counts_in_the_gan_phase_only(
    baseline: dict, tiny_shards: Path, tmp_path: Path
) -> None:
    trainer = short_run(tiny_shards, tmp_path, "fm", **{"train.losses.feature_matching.weight": 1.0})
    rows = read_jsonl(tmp_path / "fm", "train")
    assert "loss_g_feature_matching" not in rows[0]
    assert numbers(rows[0]) == numbers(baseline["rows"][0])  # step 1 (pixel phase) is the baseline's
    assert rows[1]["loss_g_feature_matching"] > 0
    assert not same(weights(trainer, "g"), baseline["g"])  # G's GAN step saw the term
    # D's step-2 update used G after step 1, which the term did not touch: D is bit-identical
    assert same(weights(trainer, "d"), baseline["d"])


def numbers(row: dict) -> dict:
    """The losses and grad norms of a train record (not its timings)."""
    return {k: v for k, v in row.items() if k.startswith(("loss_", "grad_norm_"))}


def test_n_d_2_takes_two_discriminator_steps_per_step(
    baseline: dict, tiny_shards: Path, tmp_path: Path
) -> None:
    trainer = short_run(tiny_shards, tmp_path, "nd2", **{"train.n_d": 2})
    # G's GAN step is computed against D before this step's D updates: the extra D step leaves G unchanged
    assert same(weights(trainer, "g"), baseline["g"])
    assert not same(weights(trainer, "d"), baseline["d"])
    steps = {int(s["step"]) for s in trainer.backend.optimizer("d").state.values()}
    assert steps == {2}  # one GAN step x n_d=2 (the baseline's D optimiser has stepped once)
    assert {int(s["step"]) for s in trainer.backend.optimizer("g").state.values()} == {2}


def test_weight_decay_is_decoupled_and_reaches_the_optimiser(tiny_shards: Path, tmp_path: Path) -> None:
    """AdamW: p1 = p0 (1 - lr wd) - lr u, with the same Adam update u as without decay (same gradients)."""
    wd = 0.5
    plain = make_trainer(
        tiny_overrides(tiny_shards, tmp_path, name="wd0", steps=1, pretrain=1, **SHORT), "never"
    )
    decay = make_trainer(
        tiny_overrides(
            tiny_shards, tmp_path, name="wd", steps=1, pretrain=1, **{**SHORT, "train.weight_decay": wd}
        ),
        "never",
    )
    p0 = weights(decay, "g")
    assert same(p0, weights(plain, "g"))
    assert plain.run() == 0 and decay.run() == 0
    lr = decay.lrs["g"]
    assert lr == plain.lrs["g"] == pytest.approx(1e-3)
    got, ref = weights(decay, "g"), weights(plain, "g")
    for k in p0:
        torch.testing.assert_close(got[k], ref[k] - lr * wd * p0[k], rtol=0, atol=2e-7)
    assert max((got[k] - ref[k]).abs().max().item() for k in p0) > 1e-5  # decay visibly applied
