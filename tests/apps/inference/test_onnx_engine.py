"""`hpc-sr upscale --engine onnx|auto`: ONNX Runtime behind the same engine, its export cache, the rule of
auto, the ledger's record of the engine, and the errors when onnx cannot run (onnxruntime missing,
--samples, a given .onnx of another model)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.apps.inference.ledger import LEDGER_DIR, RUN_FILE, file_sha256
from hpc_sr.apps.inference.onnx_engine import EngineError, choose_engine
from hpc_sr.apps.inference.runner import execute
from hpc_sr.cli import main
from hpc_sr.errors import HpcSrError, LedgerError
from tests.apps.inference.test_runner import cutouts, export, generator

HAS_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime / onnx / onnxscript not installed")
TOLERANCE = 1e-4  # largest |onnx - torch| accepted on the tiny images (measured ~4e-7)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the module: the tiny generator is exported once (the first export of a process
    costs seconds: torch.export warms up)."""
    return tmp_path_factory.mktemp("onnx_cache")


def run(g: torch.nn.Module, src: Path, out: Path, overwrite: bool = False, **kw: Any) -> Any:
    o = InferenceOptions(batch_size=4, normalize="none", **kw)
    return execute(g, None, [str(src)], out, o, overwrite=overwrite, progress=False)


def run_json(out: Path) -> dict[str, Any]:
    return json.loads((out / LEDGER_DIR / RUN_FILE).read_text())


@needs_ort
@pytest.mark.parametrize("how", [{}, {"tile": 8, "overlap": 2, "ensemble": True}], ids=["whole", "tiled"])
def test_onnx_outputs_match_torch_and_the_ledger_records_the_engine(
    how: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    g = generator()
    src = cutouts(tmp_path / "in", 3, 3, side=12)  # 9 images in batches of 4 that straddle the files
    np.save(src / "odd.npy", np.random.default_rng(1).uniform(0, 1, (7, 9)).astype(np.float32))
    a = run(g, src, tmp_path / "torch", **how)
    b = run(g, src, tmp_path / "onnx", engine="onnx", onnx_cache=str(cache), **how)
    assert (a.status, a.engine, b.status, b.engine) == (0, "torch", 0, "onnx")
    for f in sorted(src.glob("*.npy")):
        want, got = (np.load(tmp_path / d / f"{f.stem}_sr.npy") for d in ("torch", "onnx"))
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.abs(got.astype(np.float64) - want).max() < TOLERANCE, f.name
    assert run_json(tmp_path / "onnx")["options"]["engine"] == "onnx"
    assert run_json(tmp_path / "torch")["options"]["engine"] == "torch"


@needs_ort
def test_a_rerun_with_the_other_engine_is_refused_and_old_ledgers_read_as_torch(
    cache: Path, tmp_path: Path
) -> None:
    g, src, out = generator(), cutouts(tmp_path / "in", 2, 2), tmp_path / "out"
    assert run(g, src, out, engine="onnx", onnx_cache=str(cache)).status == 0
    assert run(g, src, out, engine="auto", onnx_cache=str(cache)).status == 0  # auto resolves to onnx here
    with pytest.raises(LedgerError, match=r'options\.engine \(was "onnx", now "torch"\).*--overwrite'):
        run(g, src, out)
    assert run(g, src, out, overwrite=True).engine == "torch"  # --overwrite redoes the folder with torch
    fp = run_json(out)
    del fp["options"]["engine"]  # a ledger written before the engine was recorded: it ran torch
    (out / LEDGER_DIR / RUN_FILE).write_text(json.dumps(fp))
    assert run(g, src, out).status == 0
    with pytest.raises(LedgerError, match=r"options\.engine \(was \"torch\", now \"onnx\"\)"):
        run(g, src, out, engine="onnx", onnx_cache=str(cache))


@needs_ort
def test_the_export_is_cached_by_the_model_fingerprint(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpc_sr.apps import export

    calls: list[Path] = []
    real = export.export_onnx

    def counted(model: torch.nn.Module, out: Path, **kw: Any) -> Path:
        calls.append(Path(out))
        return real(model, out, exporters=("legacy",), **kw)  # the fast exporter: the cache is under test

    monkeypatch.setattr(export, "export_onnx", counted)
    mine = tmp_path / "cache"
    src = cutouts(tmp_path / "in", 1, 2)
    for i in range(2):
        assert run(generator(), src, tmp_path / f"a{i}", engine="onnx", onnx_cache=str(mine)).status == 0
    assert len(calls) == 1 and calls[0].parent == mine and calls[0].name.startswith("srresnet-x2-")
    assert run(generator(seed=1), src, tmp_path / "b", engine="onnx", onnx_cache=str(mine)).status == 0
    assert len(calls) == 2 and calls[1] != calls[0]  # other weights: another key
    calls[0].write_bytes(b"not onnx")  # a damaged cache entry is exported again
    assert run(generator(), src, tmp_path / "c", engine="onnx", onnx_cache=str(mine)).status == 0
    assert calls[2:] == [calls[0]]
    assert sorted(p.name for p in mine.glob("*.onnx")) == sorted({c.name for c in calls})
    assert not list(mine.glob("*.tmp"))


@needs_ort
def test_a_given_onnx_file_is_checked_against_the_generator_and_its_hash_recorded(
    cache: Path, tmp_path: Path
) -> None:
    from hpc_sr.apps.export import export_onnx

    g, src = generator(), cutouts(tmp_path / "in", 1, 2)
    mine = export_onnx(generator(), tmp_path / "g.onnx", exporters=("legacy",))
    result = run(g, src, tmp_path / "out", engine="auto", onnx_model=str(mine))
    assert (result.status, result.engine) == (0, "onnx")
    assert run_json(tmp_path / "out")["model"]["onnx_sha256"] == file_sha256(mine)
    other = export_onnx(generator(seed=3), tmp_path / "other.onnx", exporters=("legacy",))
    with pytest.raises(EngineError, match=r"--onnx-model .*other\.onnx: differs from the generator"):
        run(g, src, tmp_path / "out2", engine="onnx", onnx_model=str(other))
    with pytest.raises(EngineError, match="not torch"):
        run(g, src, tmp_path / "out3", onnx_model=str(mine))


class Noisy(torch.nn.Module):
    scale, arch, noise_channels = 2, "noisy", 1


def opts(**kw: Any) -> InferenceOptions:
    return InferenceOptions(**kw)


@needs_ort
def test_auto_is_a_rule_with_its_reason_and_explicit_onnx_says_why_it_cannot_run() -> None:
    g = generator()
    assert choose_engine(g, opts(engine="auto"))[0] == "onnx"
    assert choose_engine(g, opts(engine="torch")) == ("torch", "asked for")
    for kw, words in (
        ({"device": "cuda"}, "on CUDA torch runs bf16"),
        ({"samples": 4}, "a stochastic generator"),
        ({"compile": True}, "--compile is torch.compile"),
    ):
        engine, why = choose_engine(g, opts(engine="auto", **kw))
        assert engine == "torch" and why.startswith("auto: ") and words in why
    assert "stochastic generator (noise_channels=1" in choose_engine(Noisy(), opts(engine="auto"))[1]
    for model, kw in ((g, {"samples": 4}), (Noisy(), {}), (g, {"compile": True})):
        with pytest.raises(EngineError, match=r"--engine onnx cannot run: .*; use --engine torch"):
            choose_engine(model, opts(engine="onnx", **kw))
    with pytest.raises(EngineError, match="engine='fast'"):
        choose_engine(g, opts(engine="fast"))


def test_without_onnxruntime_auto_runs_torch_and_onnx_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    g = generator()
    engine, why = choose_engine(g, opts(engine="auto"))
    assert engine == "torch" and "pip install 'hpc-sr[export]'" in why
    with pytest.raises(EngineError, match=r"pip install 'hpc-sr\[export\]'"):
        choose_engine(g, opts(engine="onnx"))
    src = cutouts(tmp_path / "in", 1, 2)
    result = run(g, src, tmp_path / "out", engine="auto")
    assert (result.status, result.engine) == (0, "torch") and "hpc-sr[export]" in result.engine_reason
    assert run_json(tmp_path / "out")["options"]["engine"] == "torch"


@needs_ort
def test_auto_falls_back_to_torch_when_the_export_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpc_sr.apps import export

    def broken(*a: Any, **kw: Any) -> Path:
        raise export.ExportError("arch 'srresnet': no ONNX exporter worked (a test)")

    monkeypatch.setattr(export, "export_onnx", broken)
    g, src = generator(), cutouts(tmp_path / "in", 1, 2)
    result = run(g, src, tmp_path / "out", engine="auto", onnx_cache=str(tmp_path / "c"))
    assert (result.status, result.engine) == (
        0,
        "torch",
    ) and "no ONNX exporter worked" in result.engine_reason
    with pytest.raises(EngineError, match="the export of srresnet failed: .*no ONNX exporter worked"):
        run(g, src, tmp_path / "out2", engine="onnx", onnx_cache=str(tmp_path / "c"))


@needs_ort
def test_the_command_runs_the_onnx_engine(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = export(generator(), tmp_path / "G.pt")
    src, out = cutouts(tmp_path / "in", 2, 2), tmp_path / "out"
    base = ["upscale", "--checkpoint", str(ckpt), "--device", "cpu", "--out", str(out), str(src)]
    assert main([*base, "--engine", "onnx", "--onnx-cache", str(cache)]) == 0
    assert "engine onnx (asked for)" in capsys.readouterr().err
    assert run_json(out)["options"]["engine"] == "onnx" and len(list(out.glob("*_sr.npy"))) == 2
    assert main([*base, "--engine", "torch"]) == 2
    assert 'options.engine (was "onnx", now "torch")' in capsys.readouterr().err
    assert main(["upscale", "--checkpoint", str(tmp_path / "g.onnx"), "--out", str(out), str(src)]) == 2
    assert "is run with --onnx-model" in capsys.readouterr().err


def test_samples_with_explicit_onnx_are_refused_before_anything_runs(tmp_path: Path) -> None:
    from tests.models.test_stochastic import tiny

    src = cutouts(tmp_path / "in", 1, 2)
    with pytest.raises(HpcSrError, match="--engine onnx cannot run: a stochastic generator"):
        run(tiny("srresnet", 1), src, tmp_path / "out", engine="onnx", samples=2)
    assert not (tmp_path / "out").exists()
