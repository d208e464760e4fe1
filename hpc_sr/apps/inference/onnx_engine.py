"""The engine that runs the generator: PyTorch (``torch``) or ONNX Runtime (``onnx``), or ``auto``.

    engine, why = choose_engine(model, opts)                      # "auto" resolved by the rule below
    net = OnnxGenerator.for_model(model, payload, opts)           # the generator exported once, then cached

- ``onnx`` runs the generator exported by :func:`hpc_sr.apps.export.export_onnx` (checked against PyTorch
  there) in an ``onnxruntime.InferenceSession`` (CPU; on CUDA with onnxruntime-gpu's provider). The export
  is cached: ``<cache>/<arch>-x<scale>-<key>.onnx``, the key a sha256 of the model's identity (spec, scale,
  weights hash: :func:`~hpc_sr.apps.inference.fingerprint.model_identity`) and of the exporter (torch and
  hpc_sr versions, opset); written atomically under an flock, so the ranks of a job export it once.
  ``opts.onnx_model`` names a given ``.onnx`` (``hpc-sr ckpt export --format onnx``) instead: it is run on a
  small input beside the PyTorch generator first and refused when the two differ.
- ``auto`` (a rule, not a measurement, so that every rank and every requeued run of a job picks the same
  engine, which the ledger records): torch on CUDA (bf16, channels_last, ``--compile``), with ``--compile``,
  with ``--samples`` or a stochastic generator (its noise input is not part of the exported interface), or
  when onnxruntime is missing or the export fails (the reason is said); else onnx (measured 2.0x faster than
  eager torch for deeplense-small on CPU: docs/BENCHMARKS.md). ``onnx`` asked for explicitly and impossible
  is an :class:`EngineError` naming why.
- Both engines see the same batches (tiling, self-ensemble and the padding to ``batch_size`` are
  :class:`~hpc_sr.apps.inference.predict.Predictor`'s); outputs agree within float32 rounding (~1e-6), not bit
  for bit, so the engine is part of a run's fingerprint: a rerun with the other engine is refused naming
  ``options.engine`` (``--overwrite`` redoes the folder with it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpc_sr.apps.inference.fingerprint import model_identity
from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.atomic import exclusive_lock
from hpc_sr.errors import HpcSrError
from hpc_sr.version import __version__

ENGINES = ("torch", "onnx", "auto")
EXTRA = "pip install 'hpc-sr[export]'"  # onnx, onnxruntime, onnxscript
OPSET = 18
CACHE_VAR = "HPC_SR_ONNX_CACHE"
PARITY_ATOL = 1e-4  # a given .onnx against the PyTorch generator, relative to the output's size above 1


class EngineError(HpcSrError):
    """An engine that cannot run this model or these options (named with the reason)."""


def onnxruntime() -> Any:
    """The onnxruntime module; EngineError naming the pip extra when it is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineError(f"--engine onnx needs onnxruntime, which is not installed: {EXTRA}") from None
    return ort


def default_cache() -> Path:
    """``$HPC_SR_ONNX_CACHE``, else ``$XDG_CACHE_HOME/hpc_sr/onnx`` (``~/.cache/hpc_sr/onnx``)."""
    if os.environ.get(CACHE_VAR):
        return Path(os.environ[CACHE_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpc_sr" / "onnx"


def _why_not_onnx(model: nn.Module, opts: InferenceOptions) -> str | None:
    """Why the onnx engine cannot run this model with these options (None: it can), without exporting."""
    noise = int(getattr(model, "noise_channels", 0) or 0)
    if opts.samples > 0 or noise > 0:
        return (
            f"a stochastic generator (noise_channels={noise}, samples={opts.samples}): its noise input is "
            "not part of the exported ONNX interface"
        )
    if opts.compile:
        return "--compile is torch.compile (torch engine only)"
    if opts.device.startswith("cuda") and opts.engine == "auto":
        return "on CUDA torch runs bf16, channels_last and --compile"
    try:
        ort = onnxruntime()
        import onnx  # noqa: F401 - the exporter needs it (and onnxscript for the dynamo exporter)
    except (EngineError, ImportError):
        return f"onnxruntime and onnx are not installed ({EXTRA})"
    if opts.device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return None


def choose_engine(model: nn.Module, opts: InferenceOptions) -> tuple[str, str]:
    """(engine, why) for ``opts.engine`` (module docstring); EngineError for an impossible ``onnx``."""
    if opts.engine not in ENGINES:
        raise EngineError(f"engine={opts.engine!r}: choose one of {', '.join(ENGINES)}")
    if opts.engine == "torch":
        if opts.onnx_model:
            raise EngineError("an ONNX model file (--onnx-model) runs with --engine onnx or auto, not torch")
        return "torch", "asked for"
    why = _why_not_onnx(model, opts)
    if opts.engine == "onnx" or opts.onnx_model:
        if why is not None:
            raise EngineError(f"--engine onnx cannot run: {why}; use --engine torch")
        return "onnx", "asked for" if opts.engine == "onnx" else "auto: an ONNX model file was given"
    if why is not None:
        return "torch", f"auto: {why}"
    return "onnx", f"auto: CPU and onnxruntime {onnxruntime().__version__} (about 2x eager torch on CPU)"


def cache_key(model: nn.Module, payload: dict[str, Any] | None) -> str:
    """sha256 of what the exported graph depends on: the generator's spec, scale and weights, the exporter."""
    identity = model_identity(model, payload)
    what = {
        "generator": identity["generator"],
        "scale": identity["scale"],
        "weights_sha256": identity["weights_sha256"],
        "torch": torch.__version__,
        "hpc_sr": __version__,
        "opset": OPSET,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def cached_export(model: nn.Module, payload: dict[str, Any] | None, cache: Path) -> Path:
    """The ONNX export of ``model`` in ``cache`` (exported now when missing or unreadable)."""
    from hpc_sr.apps.export import export_onnx

    key = cache_key(model, payload)
    arch = str(getattr(model, "arch", None) or type(model).__name__).lower()
    path = cache / f"{arch}-x{int(getattr(model, 'scale', 0) or 0)}-{key[:24]}.onnx"
    with exclusive_lock(cache / f".{path.name}.lock"):
        if path.is_file() and _stored_key(path) == key:
            return path
        export_onnx(model, path, opset=OPSET, meta={"hpc_sr_cache_key": key})
    return path


def _stored_key(path: Path) -> str | None:
    """The cache key a cached export records (None: unreadable, another file)."""
    from hpc_sr.apps.export import read_metadata

    try:
        return read_metadata(path).get("hpc_sr_cache_key")
    except Exception:  # noqa: BLE001 - a damaged or foreign file is exported again
        return None


class OnnxGenerator(nn.Module):
    """An ONNX generator in an onnxruntime session behind the module interface the Predictor calls:
    float32 ``(N, C, h, w)`` -> ``(N, C, s*h, s*w)`` host tensors (no parameters: tiling runs on the CPU)."""

    def __init__(self, path: str | Path, scale: int, arch: str = "onnx", device: str = "cpu") -> None:
        super().__init__()
        ort = onnxruntime()
        self.path, self.scale, self.arch = Path(path), int(scale), arch
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            index = device.partition(":")[2] or "0"
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index)}))  # type: ignore[arg-type]
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds
            why = f"{type(exc).__name__}: {exc}"
            raise EngineError(f"{self.path}: onnxruntime cannot load it: {why}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.runtime = f"onnxruntime {ort.__version__} ({self.session.get_providers()[0]})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run([self.output_name], {self.input_name: lr})[0]
        return torch.from_numpy(out).to(x.device)

    @classmethod
    def for_model(
        cls, model: nn.Module, payload: dict[str, Any] | None, opts: InferenceOptions
    ) -> OnnxGenerator:
        """The onnx engine of ``model``: ``opts.onnx_model`` (checked against it) or its cached export."""
        arch = str(getattr(model, "arch", None) or type(model).__name__)
        scale = int(opts.scale)
        if opts.onnx_model:
            net = cls(opts.onnx_model, scale, arch, opts.device)
            check_parity(model, net, f"--onnx-model {opts.onnx_model}")
            return net
        cache = Path(opts.onnx_cache) if opts.onnx_cache else default_cache()
        try:
            path = cached_export(model, payload, cache)
        except HpcSrError as exc:
            raise EngineError(f"--engine onnx: the export of {arch} failed: {exc}") from None
        return cls(path, scale, arch, opts.device)


def check_parity(model: nn.Module, net: nn.Module, what: str, atol: float = PARITY_ATOL) -> float:
    """Run ``model`` (PyTorch) and ``net`` on one small random input; EngineError when they differ by more
    than ``atol`` (relative to the output's size above 1); returns the largest difference."""
    channels = int(getattr(model, "input_channels", None) or getattr(model, "in_channels", 1) or 1)
    x = torch.rand(1, channels, 17, 23, generator=torch.Generator().manual_seed(0))
    model = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        ref = model(x)
        try:
            got = net(x)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds
            raise EngineError(f"{what}: fails on a (1, {channels}, 17, 23) input: {exc}") from None
    if tuple(got.shape) != tuple(ref.shape):
        shapes = f"{tuple(got.shape)} where the generator gives {tuple(ref.shape)}"
        raise EngineError(f"{what}: gives shape {shapes}")
    diff = float((got.double() - ref.double()).abs().max())
    limit = atol * max(1.0, float(ref.abs().max()))
    if not diff <= limit:
        raise EngineError(
            f"{what}: differs from the generator of --checkpoint by {diff:.3g} (> {limit:.3g}): another "
            "model?"
        )
    return diff
