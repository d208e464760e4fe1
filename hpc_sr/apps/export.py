"""Export a generator as a file a user can run without hpc_sr: TorchScript (torch only) or ONNX (onnxruntime).

    export_torchscript(g, Path("g.ts"), meta={"options": opts, "ema": True})
    export_onnx(g, Path("g.onnx"))
    export_model(g, out, "onnx", meta)          # "state_dict" | "torchscript" | "onnx"

Both files carry the same metadata (arch, options, scale, in_channels, bicubic_skip, lr_consistent,
hpc_sr_version, format, exporter, [ema], ...) as one JSON document named ``hpc_sr.json``: a TorchScript extra
file, an ONNX ``metadata_props`` entry. ``hpc-sr ckpt export`` adds the generator's records, as its payload
holds them: ``data_values`` and ``spread_calibration`` (:mod:`hpc_sr.models.artifacts`).
Every export is checked against PyTorch on an odd-sized input other than the example it was made from, before
the file is (atomically) written; a shape-dependent Python branch that the exporter froze is an
:class:`ExportError` naming the arch. Inputs are float32 ``(N, C, h, w)`` with
any N, h, w; outputs ``(N, C, scale*h, scale*w)``; the ONNX graph's input is named ``lr``, its output ``sr``.
A generator told its LR's blur (metadata ``lr_blur_input``) takes ``(N, C + 1, h, w)``: LR, then a channel
holding each image's LR blur (``hpc_sr.imaging.with_lr_blur``: the FWHM in LR pixels, constant per image).
A stochastic generator (``noise_channels > 0``) is refused (:class:`ExportError`): its noise input is not part
of the exported interface; use its plain generator file (``state_dict``) with ``hpc_sr.load_generator``.

Loading without hpc_sr::

    # TorchScript: needs only torch
    import json, torch
    extra = {"hpc_sr.json": ""}
    g = torch.jit.load("g.ts", map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["hpc_sr.json"])
    with torch.no_grad():
        sr = g(lr)                               # lr: torch.float32 (N, C, h, w)

    # ONNX: needs only onnxruntime and numpy
    import json, numpy as np, onnxruntime as ort
    sess = ort.InferenceSession("g.onnx", providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["hpc_sr.json"])
    sr = sess.run(["sr"], {"lr": lr.astype(np.float32)})[0]
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hpc_sr.atomic import atomic_open
from hpc_sr.errors import HpcSrError
from hpc_sr.imaging import with_lr_blur
from hpc_sr.version import __version__

log = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

META_NAME = "hpc_sr.json"
FORMATS = ("state_dict", "torchscript", "onnx")
TORCHSCRIPT_METHODS = ("script", "trace")
ONNX_EXPORTERS = ("dynamo", "legacy")
INPUT_NAME, OUTPUT_NAME = "lr", "sr"
_EXAMPLE_BATCH, _CHECK_BATCH = 2, 1  # a batch of 2 at export keeps torch.export from specialising N to 1


class ExportError(HpcSrError):
    """A model that cannot be exported, an export that does not match PyTorch, or an unreadable export."""


def _first_lines(exc: BaseException, chars: int = 600) -> str:
    """The gist of an exception's message (exporter errors run to pages): its start and the likely cause."""
    text = _ANSI.sub("", str(exc)).strip()
    if "## Exception summary" in text:  # torch.onnx wraps torch.export's error in advice; keep the error
        text = text.split("## Exception summary", 1)[1].split("(Refer to the full stack trace", 1)[0]
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    keep = lines[:2]
    for prefix in ("Expected", "- Not all values", 'File "'):  # TorchScript / torch.export causes
        keep += [s for s in lines[2:] if s.startswith(prefix)][:1]
    text = " | ".join(keep)
    text = text if len(text) <= chars else text[: chars - 3] + "..."
    return f"{type(exc).__name__}: {text}"


_REQUIRED = object()


def _model_attr(
    model: nn.Module, meta: dict[str, Any], key: str, cast: type, default: Any = _REQUIRED
) -> Any:
    """``meta[key]`` or the model's attribute ``key`` (both given must agree), else ``default``."""
    has_attr = hasattr(model, key)
    if key in meta:
        if has_attr and cast(getattr(model, key)) != meta[key]:
            raise ExportError(f"meta[{key!r}]={meta[key]!r} but the model has {key}={getattr(model, key)!r}")
        return meta[key]
    if has_attr:
        return cast(getattr(model, key))
    if default is _REQUIRED:
        raise ExportError(f"{type(model).__name__} has no {key!r} attribute: pass meta={{{key!r}: ...}}")
    return default


def export_metadata(model: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able metadata stored with an export: the model's own attributes overlaid by ``meta``."""
    meta = dict(meta or {})
    if dataclasses.is_dataclass(meta.get("options")) and not isinstance(meta["options"], type):
        meta["options"] = dataclasses.asdict(meta["options"])
    info: dict[str, Any] = {
        "arch": str(meta.get("arch") or getattr(model, "arch", None) or type(model).__name__.lower()),
        "options": meta.get("options", {}),
        "scale": _model_attr(model, meta, "scale", int),
        "in_channels": _model_attr(model, meta, "in_channels", int),
        "bicubic_skip": _model_attr(model, meta, "bicubic_skip", bool, default=False),
        "lr_consistent": _model_attr(model, meta, "lr_consistent", bool, default=False),
        "hpc_sr_version": __version__,
    }
    if _model_attr(model, meta, "lr_blur_input", bool, default=False):
        info["lr_blur_input"] = True  # the input is (N, in_channels + 1, h, w): LR, then its LR blur (FWHM)
    for key, value in meta.items():
        info.setdefault(key, value)
    for key, value in info.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ExportError(f"meta[{key!r}]={value!r} cannot be stored as JSON ({exc})") from None
    return info


def _prepare(model: nn.Module, fmt: str) -> nn.Module:
    """A float32, CPU, eval-mode copy (the caller's model is left as it was); DDP/DP wrappers removed.

    A stochastic generator (``noise_channels > 0``) is an ExportError naming the format.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    noise = int(getattr(model, "noise_channels", 0) or 0)
    if noise > 0:
        arch = getattr(model, "arch", type(model).__name__)
        raise ExportError(
            f"arch {arch!r}: a stochastic generator (noise_channels={noise}) cannot be exported as {fmt}: "
            "its noise input is not part of the exported interface; export the plain generator file "
            "(format state_dict, `hpc-sr ckpt export`) and load it with hpc_sr.load_generator"
        )
    return copy.deepcopy(model).float().cpu().eval().requires_grad_(False)


def _inputs(in_channels: int, example_hw: tuple[int, int], lr_blur: bool = False) -> tuple[Tensor, Tensor]:
    """The export example and a differently sized, odd check input (other batch size too); with ``lr_blur``
    each gets its LR-blur channel, 0 for the first image (a block mean) and > 0 for the others."""
    h, w = (int(v) for v in example_hw)
    if h < 1 or w < 1:
        raise ExportError(f"example_hw={tuple(example_hw)!r} must be two positive sizes")
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(_EXAMPLE_BATCH, in_channels, h, w, generator=gen)
    check = torch.rand(_CHECK_BATCH, in_channels, (h + 6) | 1, (w + 4) | 1, generator=gen)
    if lr_blur:
        example, check = (with_lr_blur(x, torch.arange(len(x), dtype=x.dtype) * 1.5)
                          for x in (example, check))  # fmt: skip
    return example, check


def _compare(what: str, arch: str, ref: Tensor, got: Tensor, x: Tensor, atol: float) -> None:
    """Raise unless ``got`` equals ``ref`` within ``atol`` (relative to the output's size when above 1)."""
    shape = tuple(x.shape)
    if tuple(got.shape) != tuple(ref.shape):
        raise ExportError(
            f"arch {arch!r}: {what} gives shape {tuple(got.shape)} for input {shape}, PyTorch "
            f"{tuple(ref.shape)} (a shape-dependent Python branch in forward frozen at export?)"
        )
    diff = (got.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    limit = atol * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    if not diff <= limit:
        raise ExportError(
            f"arch {arch!r}: {what} differs from PyTorch by {diff:.3g} (> {limit:.3g}) on input {shape} "
            "(data- or shape-dependent Python code in forward frozen at export?)"
        )


def _run_error(arch: str, what: str, check: Tensor, example: Tensor, exc: BaseException) -> ExportError:
    """The error for an exported model that fails (``what``) to run on ``check``, made from ``example``."""
    return ExportError(
        f"arch {arch!r}: {what} on input {tuple(check.shape)} (made from {tuple(example.shape)}): "
        f"{_first_lines(exc)}"
    )


def _write(out: Path, data: bytes) -> Path:
    with atomic_open(out, "wb") as fh:
        fh.write(data)
    return out


def _to_torchscript(model: nn.Module, method: str, example: Tensor) -> torch.jit.ScriptModule:
    if method == "script":
        return torch.jit.script(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # what trace froze is checked next
        return torch.jit.trace(model, (example,), check_trace=False)


def export_torchscript(
    model: nn.Module,
    out: str | Path,
    example_hw: tuple[int, int] = (17, 23),
    meta: dict[str, Any] | None = None,
    methods: Sequence[str] = TORCHSCRIPT_METHODS,
    atol: float = 1e-5,
) -> Path:
    """Write ``model`` as TorchScript (``torch.jit.script``, else ``torch.jit.trace``).

    Either is checked against PyTorch on an odd input of another size and batch than the example.
    """
    out = Path(out)
    for method in methods:
        if method not in TORCHSCRIPT_METHODS:
            valid = ", ".join(TORCHSCRIPT_METHODS)
            raise ExportError(f"unknown TorchScript method {method!r}; valid: {valid}")
    m = _prepare(model, "TorchScript")
    info = export_metadata(m, meta)
    arch = info["arch"]
    example, check = _inputs(info["in_channels"], example_hw, bool(info.get("lr_blur_input")))
    with torch.no_grad():
        ref = m(check)
    errors = []
    for method in methods:
        try:
            ts = _to_torchscript(m, method, example)
        except Exception as exc:
            errors.append(f"{method}: {_first_lines(exc)}")
            log.info("arch %r: torch.jit.%s failed: %s", arch, method, errors[-1])
            continue
        try:
            with torch.no_grad():
                got = ts(check)
        except Exception as exc:
            raise _run_error(arch, f"the TorchScript ({method}) module fails", check, example, exc) from None
        _compare(f"TorchScript ({method})", arch, ref, got, check, atol)
        info.update(format="torchscript", exporter=method)
        buf = io.BytesIO()
        torch.jit.save(ts, buf, _extra_files={META_NAME: json.dumps(info, sort_keys=True)})
        log.info("arch %r: TorchScript via torch.jit.%s -> %s", arch, method, out)
        return _write(out, buf.getvalue())
    raise ExportError(f"arch {arch!r}: no TorchScript export worked ({'; '.join(errors)})")


_DIM_NAMES = {0: "batch", 2: "height", 3: "width"}


def _name_dims(proto: Any) -> None:
    """Rename torch.export's symbols (``s75``) of the input's dynamic dims to batch, height, width."""
    names = {}
    for axis, dim in enumerate(proto.graph.input[0].type.tensor_type.shape.dim):
        if dim.dim_param and axis in _DIM_NAMES:
            names[dim.dim_param] = _DIM_NAMES[axis]
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: names[m.group(1)], dim.dim_param)


def _onnx_dynamo(model: nn.Module, example: Tensor, opset: int) -> Any:
    from torch.export import Dim

    # Dim.DYNAMIC rather than named Dims: the latter reject any guard torch.export derives on a size (e.g.
    # SwinIR's padding to whole windows); a size that the graph really froze fails the check afterwards.
    dims = {axis: Dim.DYNAMIC for axis in _DIM_NAMES}
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes=(dims,),
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        verbose=False,
    )
    proto = program.model_proto
    _name_dims(proto)
    return proto


def _onnx_legacy(model: nn.Module, example: Tensor, opset: int) -> Any:
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buf,
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: _DIM_NAMES, OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}},
    )
    return onnx.load_model_from_string(buf.getvalue())


_ONNX_EXPORTERS: dict[str, Callable[[nn.Module, Tensor, int], Any]] = {
    "dynamo": _onnx_dynamo,
    "legacy": _onnx_legacy,
}


def _run_onnx(data: bytes, x: Tensor) -> Tensor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("checking an ONNX export needs onnxruntime (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def export_onnx(
    model: nn.Module,
    out: str | Path,
    opset: int = 18,
    example_hw: tuple[int, int] = (17, 23),
    meta: dict[str, Any] | None = None,
    exporters: Sequence[str] = ONNX_EXPORTERS,
    verify: bool = True,
    atol: float = 1e-5,
) -> Path:
    """Write ``model`` as ONNX with dynamic batch/height/width, checked in onnxruntime against PyTorch.

    Tries ``torch.onnx.export(dynamo=True)`` first, then the legacy TorchScript-based exporter; the one
    that worked is recorded as ``exporter`` in the metadata.
    """
    out = Path(out)
    for name in exporters:
        if name not in _ONNX_EXPORTERS:
            raise ExportError(f"unknown ONNX exporter {name!r}; valid: {', '.join(ONNX_EXPORTERS)}")
    m = _prepare(model, "ONNX")
    info = export_metadata(m, meta)
    arch = info["arch"]
    example, check = _inputs(info["in_channels"], example_hw, bool(info.get("lr_blur_input")))
    errors, proto = [], None
    for name in exporters:
        try:
            proto = _ONNX_EXPORTERS[name](m, example, opset)
            break
        except Exception as exc:
            errors.append(f"{name}: {_first_lines(exc)}")
            log.warning("arch %r: ONNX %s exporter failed: %s", arch, name, errors[-1])
    if proto is None:
        raise ExportError(f"arch {arch!r}: no ONNX exporter worked ({'; '.join(errors)})")
    info.update(format="onnx", exporter=name, opset=opset)
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == META_NAME:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_NAME, json.dumps(info, sort_keys=True)
    data = proto.SerializeToString()
    if verify:
        with torch.no_grad():
            ref = m(check)
        try:
            got = _run_onnx(data, check)
        except ExportError:
            raise
        except Exception as exc:
            what = f"the ONNX ({name}) model fails in onnxruntime"
            raise _run_error(arch, what, check, example, exc) from None
        _compare(f"ONNX ({name}) in onnxruntime", arch, ref, got, check, atol)
    log.info("arch %r: ONNX via the %s exporter -> %s", arch, name, out)
    return _write(out, data)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``hpc_sr.json`` metadata of a TorchScript or ONNX export (without loading the model)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    text: str | None = None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith(f"/extra/{META_NAME}")]
                text = zf.read(names[0]).decode() if names else None
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"{path}: corrupt TorchScript file ({exc})") from None
    else:
        import onnx
        from google.protobuf.message import DecodeError

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, OSError) as exc:
            raise ExportError(f"{path}: not a TorchScript or ONNX file ({_first_lines(exc)})") from None
        text = next((p.value for p in proto.metadata_props if p.key == META_NAME), None)
    if text is None:
        raise ExportError(f"{path}: no {META_NAME} metadata (not an hpc_sr export, or corrupt)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: corrupt {META_NAME} metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{path}: {META_NAME} metadata is {type(meta).__name__}, not an object")
    return meta


def export_model(
    model: nn.Module,
    out: str | Path,
    fmt: str,
    meta: dict[str, Any] | None = None,
    *,
    save_state_dict: Callable[[Path], Path | None] | None = None,
    example_hw: tuple[int, int] = (17, 23),
    opset: int = 18,
) -> Path:
    """Export ``model`` to ``out`` as ``fmt`` (one of :data:`FORMATS`).

    ``state_dict`` is written by ``save_state_dict(out)`` (the trainer's plain generator file); without it,
    ``NotImplementedError``.
    """
    out = Path(out)
    if fmt == "torchscript":
        return export_torchscript(model, out, example_hw=example_hw, meta=meta)
    if fmt == "onnx":
        return export_onnx(model, out, opset=opset, example_hw=example_hw, meta=meta)
    if fmt == "state_dict":
        if save_state_dict is None:
            raise NotImplementedError(
                "export_model(fmt='state_dict') needs save_state_dict=callable(out) (the plain generator "
                "file is written from a checkpoint by hpc_sr.models.artifacts.export_generator)"
            )
        written = save_state_dict(out)
        return Path(written) if written is not None else out
    raise ExportError(f"unsupported export format {fmt!r}; valid: {', '.join(FORMATS)}")
