"""Exports every registered generator to TorchScript and ONNX and runs them as a user without hpc_sr would."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpc_sr.apps.export import (
    META_NAME,
    ExportError,
    export_model,
    export_onnx,
    export_torchscript,
    read_metadata,
)
from hpc_sr.models.registry import GENERATORS, GeneratorCommon, build_generator, generator_names

ARCHS = generator_names()
PLAIN = GeneratorCommon(bicubic_skip=False)


def tiny_generator(arch: str, scale: int = 2, common: GeneratorCommon = PLAIN) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    try:
        opts = dataclasses.asdict(GENERATORS[arch].options.tiny())
        return build_generator(arch, opts, scale, common), opts
    except Exception as exc:  # another engineer's arch in progress: say so, not a traceback
        msg = f"arch {arch!r}: its tiny() options do not build: {type(exc).__name__}: {exc}"
    pytest.fail(msg, pytrace=False)


def inputs() -> list[Tensor]:
    """Odd sizes, none equal to the export example (2 x C x 17 x 23)."""
    gen = torch.Generator().manual_seed(3)
    return [torch.rand(1, 1, 13, 19, generator=gen), torch.rand(3, 1, 9, 11, generator=gen)]


def run_torchscript(path: Path, x: Tensor) -> tuple[Tensor, dict]:
    """As in the module docstring: plain torch, no hpc_sr."""
    extra = {META_NAME: ""}
    g = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    with torch.no_grad():
        return g(x), json.loads(extra[META_NAME])


def run_onnx(path: Path, x: Tensor) -> tuple[Tensor, dict]:
    """As in the module docstring: onnxruntime and numpy only."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map[META_NAME])
    return torch.from_numpy(sess.run(["sr"], {"lr": x.numpy().astype(np.float32)})[0]), meta


RUNNERS = {"torchscript": run_torchscript, "onnx": run_onnx}


def export_or_fail(model: nn.Module, out: Path, fmt: str, meta: dict, arch: str) -> Path:
    try:
        return export_model(model, out, fmt, meta)
    except ExportError as exc:
        msg = f"arch {arch!r} does not export to {fmt}: {exc}"
    pytest.fail(msg, pytrace=False)


def assert_matches(model: nn.Module, path: Path, fmt: str) -> dict:
    model.eval()
    for x in inputs():
        got, meta = RUNNERS[fmt](path, x)
        with torch.no_grad():
            ref = model(x)
        assert got.shape == ref.shape == (x.shape[0], 1, model.scale * x.shape[2], model.scale * x.shape[3])
        assert (got - ref).abs().max().item() <= 1e-5, f"{meta['arch']} {fmt} on {tuple(x.shape)}"
    return meta


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_exports_and_matches_pytorch(arch: str, fmt: str, tmp_path: Path) -> None:
    model, opts = tiny_generator(arch)
    out = export_or_fail(model, tmp_path / f"{arch}.{fmt}", fmt, {"options": opts, "ema": True}, arch)
    assert model.training, "the caller's model must be left in train mode"
    meta = assert_matches(model, out, fmt)
    as_json = json.loads(json.dumps(opts))  # tuples come back as lists
    expected = {"arch": arch, "options": as_json, "scale": 2, "in_channels": 1, "bicubic_skip": False}
    assert {k: meta[k] for k in expected} == expected
    assert meta["lr_consistent"] is False and meta["ema"] is True and meta["format"] == fmt
    assert meta["hpc_sr_version"] and meta["exporter"] in ("script", "trace", "dynamo", "legacy")
    assert read_metadata(out) == meta
    print(f"{arch}: {fmt} via {meta['exporter']}")
    if fmt == "onnx":  # batch, height and width are symbolic in the graph, not just tolerated
        dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_lr_consistent_x4_export_keeps_the_projection(fmt: str, tmp_path: Path) -> None:
    model, _ = tiny_generator("srresnet", 4, GeneratorCommon(bicubic_skip=True, lr_consistent=True))
    with torch.no_grad():  # the bicubic skip zeroes the tail: give it weights so the net part counts
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    out = export_model(model, tmp_path / f"g.{fmt}", fmt, {})
    meta = assert_matches(model, out, fmt)
    assert (meta["scale"], meta["bicubic_skip"], meta["lr_consistent"]) == (4, True, True)
    assert meta["options"] == {}
    x = inputs()[0]
    sr, _ = RUNNERS[fmt](out, x)
    assert (F.avg_pool2d(sr, 4) - x).abs().max().item() <= 1e-5  # 4x4 block means equal the input


def test_fallback_exporters_work_too(tmp_path: Path) -> None:
    model, _ = tiny_generator("srresnet")
    ts = export_torchscript(model, tmp_path / "g.ts", methods=("trace",))
    onx = export_onnx(model, tmp_path / "g.onnx", exporters=("legacy",))
    assert read_metadata(ts)["exporter"] == "trace" and read_metadata(onx)["exporter"] == "legacy"
    assert_matches(model, ts, "torchscript")
    assert_matches(model, onx, "onnx")


class SizeBaked(nn.Module):
    """Python arithmetic on the input size: not scriptable (numpy), frozen by trace and legacy ONNX."""

    arch = "size_baked"
    scale, in_channels, bicubic_skip = 2, 1, False

    def forward(self, lr: Tensor) -> Tensor:
        width = float(np.prod(lr.shape[-1:]))
        return F.interpolate(lr, scale_factor=2.0, mode="nearest") * width


def test_frozen_shape_code_is_an_error_naming_the_arch(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"arch 'size_baked': TorchScript \(trace\) differs from PyTorch"):
        export_torchscript(SizeBaked(), tmp_path / "g.ts")
    with pytest.raises(ExportError, match=r"arch 'size_baked': ONNX \(legacy\) in onnxruntime differs"):
        export_onnx(SizeBaked(), tmp_path / "g.onnx", exporters=("legacy",))
    assert not list(tmp_path.iterdir()), "a failed export must leave no file (not even a temp file)"


def test_bad_format_meta_and_files_are_named(tmp_path: Path) -> None:
    model, _ = tiny_generator("srresnet")
    with pytest.raises(ExportError, match=r"unsupported export format 'tflite'; valid: state_dict, torchsc"):
        export_model(model, tmp_path / "g.tflite", "tflite")
    with pytest.raises(NotImplementedError, match="save_state_dict"):
        export_model(model, tmp_path / "g.pt", "state_dict")
    written = export_model(model, tmp_path / "g.pt", "state_dict", save_state_dict=lambda p: p)
    assert written == tmp_path / "g.pt"
    with pytest.raises(ExportError, match=r"meta\['scale'\]=4 but the model has scale=2"):
        export_torchscript(model, tmp_path / "g.ts", meta={"scale": 4})
    with pytest.raises(ExportError, match=r"meta\['when'\]=.* cannot be stored as JSON"):
        export_torchscript(model, tmp_path / "g.ts", meta={"when": object()})
    with pytest.raises(ExportError, match="unknown ONNX exporter 'tf'"):
        export_onnx(model, tmp_path / "g.onnx", exporters=("tf",))
    assert not list(tmp_path.iterdir())

    good = export_torchscript(model, tmp_path / "g.ts")
    truncated, garbage, plain = tmp_path / "cut.ts", tmp_path / "junk.onnx", tmp_path / "plain.ts"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage.write_bytes(b"\xff" * 64)
    torch.jit.save(torch.jit.script(nn.Identity()), str(plain))
    for bad in (truncated, garbage, plain, tmp_path / "missing.onnx"):
        with pytest.raises(ExportError, match=str(bad)):
            read_metadata(bad)
