"""What a run's outputs depend on, as plain JSON: the options, the model's identity and the hpc_sr version.

    fp = run_fingerprint(opts, model, payload)
    differences(old, fp)     # ["options.tile (was 0, now 64)", "model.weights_sha256 (...)"]

``options.engine`` records the engine that ran (torch | onnx: their outputs agree within float rounding, not
bit for bit, so a rerun with the other engine is refused). The model's identity is its generator spec (arch
and options; ``arch`` alone for a bare module), its scale, a sha256 over the state_dict's names, types,
shapes and bytes, the training value record (``data_values``) and the stored spread calibration (and the
sha256 of a given ONNX file): two runs whose fingerprints agree write the same outputs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.models.artifacts import CALIBRATION_KEY, payload_generator_spec
from hpc_sr.version import __version__


def weights_sha256(model: nn.Module) -> str:
    """sha256 of ``model.state_dict()``: every entry's name, dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(model: nn.Module, payload: dict[str, Any] | None) -> dict[str, Any]:
    """The generator spec, scale, weights hash, data_values and spread calibration of ``model``."""
    payload = payload or {}
    has_spec = isinstance(payload.get("generator"), dict) or isinstance(payload.get("model"), dict)
    spec = (
        payload_generator_spec(payload)
        if has_spec
        else {"arch": getattr(model, "arch", type(model).__name__)}
    )
    return {
        "generator": spec,
        "scale": int(getattr(model, "scale", payload.get("scale", 0)) or 0),
        "weights_sha256": weights_sha256(model),
        "data_values": payload.get("data_values"),
        "spread_calibration": payload.get(CALIBRATION_KEY),
    }


def run_fingerprint(
    opts: InferenceOptions, model: nn.Module, payload: dict[str, Any] | None, onnx_sha256: str = ""
) -> dict[str, Any]:
    """``{"hpc_sr", "options", "model"}`` as JSON values (tuples become lists). ``options.engine`` is the
    engine that runs (torch | onnx); ``onnx_sha256``: that of a given ONNX file, recorded as
    ``model.onnx_sha256`` (an export made by the engine's cache is a function of the weights recorded)."""
    identity = model_identity(model, payload)
    if onnx_sha256:
        identity["onnx_sha256"] = onnx_sha256
    fp = {"hpc_sr": __version__, "options": opts.fingerprint(), "model": identity}
    return json.loads(json.dumps(fp, sort_keys=True, default=str))


# options added after ledgers were first written, and what a ledger without them ran with
_ADDED_OPTIONS = {"engine": "torch", "lr_blur": None}


def upgraded(fp: dict[str, Any] | None) -> dict[str, Any] | None:
    """A fingerprint recorded before an option was (``options.engine``: torch; ``options.lr_blur``: none)
    reads as what that run did, so a folder begun by an older version resumes."""
    if fp is not None and isinstance(fp.get("options"), dict):
        fp = {**fp, "options": {**_ADDED_OPTIONS, **fp["options"]}}
    return fp


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key (was A, now B)`` for every dotted key whose value differs (absent: ``-``)."""
    a, b = _flat(old), _flat(new)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            was = "-" if va is missing else _short(va)
            now = "-" if vb is missing else _short(vb)
            out.append(f"{key} (was {was}, now {now})")
    return out
