"""`hpc-sr ckpt` on real tiny runs: list, prune, verify, export, average; outputs load and evaluate."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hpc_sr.apps import ckpt as ck
from hpc_sr.apps.evaluate import evaluate
from hpc_sr.config import config_to_dict, load_config
from hpc_sr.models.artifacts import generator_payload, load_generator
from hpc_sr.models.checkpoint_layout import atomic_torch_save
from hpc_sr.train.checkpoint import CheckpointManager
from hpc_sr.train.components import build_generator
from tests.apps.test_runs import build_sweep, train
from tests.conftest import in_process_group, mean_psnr, read_shards, tiny_overrides


@pytest.fixture(scope="module")
def sweep(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_sweep(tiny_shards, tmp_path_factory.getbasetemp() / "tools_sweep")


def copy_run(sweep: dict[str, Any], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sweep["sweep"] / name, tmp_path / name))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = ck.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def set_meta_psnr(step_dir: Path, psnr: float) -> None:
    meta = json.loads((step_dir / "meta.json").read_text())
    meta["val"]["psnr"] = psnr
    (step_dir / "meta.json").write_text(json.dumps(meta))


# ----------------------------------------------------------------------------------------------- list / prune
def test_list_shows_best_latest_sizes_and_incomplete_temp_dirs(
    sweep: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(sweep, "requeued", tmp_path)
    temp = run / "checkpoints" / ".tmp-step_00000008"
    (temp / "rng").mkdir(parents=True)
    (temp / "rng" / "rank_00000.pt").write_bytes(b"half a save")
    rows = {r["name"]: r for r in ck.list_checkpoints(run)}
    assert list(rows) == ["step_00000002", "step_00000004", "step_00000006", ".tmp-step_00000008"]
    assert not rows[".tmp-step_00000008"]["complete"] and rows[".tmp-step_00000008"]["step"] == 8
    ckpts = run / "checkpoints"
    metas = {n: json.loads((ckpts / n / "meta.json").read_text()) for n in rows if "tmp" not in n}
    best = max(metas, key=lambda n: metas[n]["val"]["psnr"])
    assert [n for n, r in rows.items() if r["best"]] == [best]
    assert [n for n, r in rows.items() if r["latest"]] == ["step_00000006"]
    for n in metas:
        assert rows[n]["psnr"] == metas[n]["val"]["psnr"] and rows[n]["complete"]
        assert rows[n]["size"] == sum(f.stat().st_size for f in (ckpts / n).rglob("*") if f.is_file())
    rc, out, _ = cli(capsys, "list", str(run))
    assert rc == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "INCOMPLETE" in lines[".tmp-step_00000008"] and lines["step_00000006"].endswith("latest")
    assert "best" in lines[best]


def test_prune_keeps_newest_best_and_latest(
    sweep: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(sweep, "requeued", tmp_path)
    ckpts = run / "checkpoints"
    set_meta_psnr(ckpts / "step_00000002", 99.0)  # the oldest is recorded as the best
    names = lambda: sorted(p.name for p in ckpts.iterdir())  # noqa: E731
    before = names()
    rc, out, _ = cli(capsys, "prune", str(run), "--keep", "0", "--dry-run")
    assert rc == 0 and "would remove" in out and "step_00000004" in out and names() == before
    rc, out, _ = cli(capsys, "prune", str(run), "--keep", "0")
    assert rc == 0 and "step_00000004" in out and "step_00000002" not in out and "step_00000006" not in out
    assert names() == ["latest", "step_00000002", "step_00000006"]  # no .pruned-* left behind
    assert CheckpointManager(run).latest() == ckpts / "step_00000006"
    rc, out, _ = cli(capsys, "prune", str(run), "--keep", "5")
    assert rc == 0 and "removed 0 checkpoint(s)" in out
    assert cli(capsys, "prune", str(run), "--keep", "-1")[0] == 2


# ----------------------------------------------------------------------------------------------- verify
def test_verify_ok_then_names_each_corrupted_file(
    sweep: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(sweep, "lr_hi", tmp_path)
    rc, out, _ = cli(capsys, "verify", str(run))
    assert rc == 0 and out.count("OK") == 2, out
    rng = run / "checkpoints" / "step_00000004" / "rng" / "rank_00000.pt"
    rng.write_bytes(rng.read_bytes()[:100])  # truncated
    trainer_pt = run / "checkpoints" / "step_00000002" / "trainer.pt"
    state = torch.load(trainer_pt, weights_only=True)
    state["evil"] = Path("/etc/passwd")  # needs a full unpickler
    torch.save(state, trainer_pt)
    rc, out, _ = cli(capsys, "verify", str(run))
    assert rc == 1
    assert f"{rng}: cannot be loaded safely" in out
    assert f"{trainer_pt}: cannot be loaded safely (weights_only=True)" in out
    assert cli(capsys, "verify", str(run / "checkpoints" / "step_00000004"))[0] == 1
    rng.unlink()
    rc, out, _ = cli(capsys, "verify", str(run / "checkpoints" / "step_00000004"))
    assert rc == 1 and "missing RNG state of 1 of 1 ranks: rank_00000.pt" in out
    meta = run / "checkpoints" / "step_00000004" / "meta.json"
    meta.write_text(meta.read_text()[:-10])
    rc, out, _ = cli(capsys, "verify", str(meta.parent))
    assert rc == 1 and f"{meta}: unreadable checkpoint metadata" in out


def test_verify_checks_crcs_and_accepts_intact_backend_files(
    sweep: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step_dir = copy_run(sweep, "lr_hi", tmp_path) / "checkpoints" / "step_00000004"
    engine_file = step_dir / "engine_g" / "states.pt"  # like DeepSpeed's: pickles a library object
    engine_file.parent.mkdir()
    torch.save({"weights": torch.ones(64), "scaler": Path("some/object")}, engine_file)
    rc, out, _ = cli(capsys, "verify", str(step_dir))
    assert rc == 0, out
    engine_file.write_bytes(engine_file.read_bytes()[:-40])
    rc, out, _ = cli(capsys, "verify", str(step_dir))
    assert rc == 1 and str(engine_file) in out
    engine_file.unlink()
    rng = step_dir / "rng" / "rank_00000.pt"  # flip one byte of tensor data: torch.load does not notice
    with zipfile.ZipFile(rng) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(rng.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    rng.write_bytes(bytes(raw))
    rc, out, _ = cli(capsys, "verify", str(step_dir))
    assert rc == 1 and str(rng) in out, out


# ----------------------------------------------------------------------------------------------- export
# The reference weights come from the live Trainer, so nothing below depends on the back-end's file layout.
@pytest.fixture(params=["ddp", "deepspeed"])
def trained(request: pytest.FixtureRequest, tiny_shards: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    backend = request.param
    with in_process_group():  # DeepSpeed's one-rank group and launcher variables go away afterwards
        trainer = train(tiny_shards, tmp_path, f"export_{backend}", steps=4, **{"dist.backend": backend})
        yield {"run": tmp_path / f"export_{backend}", "trainer": trainer, "data": tiny_shards}


def test_export_ema_and_raw_generators_load_and_evaluate(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step_dir = trained["run"] / "checkpoints" / "step_00000004"
    trainer = trained["trainer"]
    refs = {"--ema": trainer.ema.module.state_dict(), "--no-ema": trainer.backend.module("g").state_dict()}
    assert any(not torch.equal(refs["--ema"][k], refs["--no-ema"][k]) for k in refs["--ema"])
    for flag, ref in refs.items():
        out = tmp_path / f"G{flag}.pt"
        rc, text, err = cli(capsys, "export", str(step_dir), "--out", str(out), flag)
        assert rc == 0 and str(out) in text, err
        model, payload = load_generator(out)
        assert payload["step"] == 4 and payload["source"] == str(step_dir)
        got = model.state_dict()
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k].float()) for k in ref)
    exported = evaluate(tmp_path / "G--ema.pt", trained["data"], split="test", quiet=True)
    direct = evaluate(step_dir, trained["data"], split="test", quiet=True)
    assert exported["n"] == 5 and exported["model"] == direct["model"]
    rc, _, err = cli(capsys, "export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pt"))
    assert rc == 2 and "missing" in err and not (tmp_path / "x.pt").exists()


def test_export_torchscript_and_onnx_run_without_hpc_sr_on_an_odd_size(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import onnxruntime as ort

    step_dir = trained["run"] / "checkpoints" / "step_00000004"
    model, _ = load_generator(step_dir)
    lr = torch.rand(1, 1, 13, 19)
    with torch.no_grad():
        ref = model(lr).numpy()
    ts, onnx = tmp_path / "G.ts", tmp_path / "G.onnx"
    for fmt, out in (("torchscript", ts), ("onnx", onnx)):
        rc, text, err = cli(capsys, "export", str(step_dir), "--out", str(out), "--format", fmt)
        assert rc == 0 and fmt in text, err
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(ts))(lr).numpy(), ref, atol=1e-5, rtol=0)
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: lr.numpy()})
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- average
def test_average_of_checkpoints_is_the_mean_of_their_ema_weights(
    sweep: dict[str, Any], tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = [
        sweep["sweep"] / "lr_hi" / "checkpoints" / "step_00000004",
        sweep["sweep"] / "lr_lo" / "checkpoints" / "step_00000002",
    ]
    emas = [torch.load(s / "trainer.pt", weights_only=True)["ema"]["module"] for s in sources]
    exported = tmp_path / "lo.pt"  # an exported file may be mixed with checkpoint directories
    assert cli(capsys, "export", str(sources[1]), "--out", str(exported))[0] == 0
    out = tmp_path / "avg.pt"
    rc, text, err = cli(capsys, "average", str(sources[0]), str(exported), "--out", str(out))
    assert rc == 0 and "average of 2" in text, err
    model, payload = load_generator(out)
    assert payload["averaged_from"] == [str(sources[0]), str(exported)] and payload["step"] == 4
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, (emas[0][key] + emas[1][key]) / 2, rtol=0, atol=1e-7)
    result = evaluate(out, tiny_shards, split="test", quiet=True)
    lr, hr, _ = read_shards(tiny_shards, split="test")
    with torch.no_grad():
        want = mean_psnr(model(torch.from_numpy(lr)), hr)  # the averaged weights, run here
    assert result["n"] == len(hr) == 5
    assert result["model"]["psnr"] == pytest.approx(want, abs=1e-5)


def test_average_refuses_different_models_naming_the_keys(
    sweep: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(None, tiny_overrides(None, tmp_path, **{"model.g.options.channels": 16}))
    other = tmp_path / "wide.pt"
    weights = build_generator(cfg.model, 2).state_dict()
    atomic_torch_save(generator_payload(config_to_dict(cfg)["model"], 2, weights, "random init", 0), other)
    good = sweep["sweep"] / "lr_hi"
    rc, _, err = cli(capsys, "average", str(good), str(other), "--out", str(tmp_path / "avg.pt"))
    assert rc == 2 and "model.g.options.channels: 8 in" in err and f"16 in {other}" in err
    assert not (tmp_path / "avg.pt").exists()
