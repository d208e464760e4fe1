"""Generator artifacts: whatever names a trained generator -> the generator and what describes it.

    g, payload = load_generator("deeplense-small")      # a shipped name, an exported G.pt,
    g, payload = load_generator("runs/demo")            # a run directory (its latest checkpoint)
    g, payload = load_generator("runs/demo/checkpoints/step_00000500")   # or a checkpoint step directory

The payload is the exported-generator format (``hpc_sr.generator``): a plain state_dict plus the resolved
generator spec (arch, full options, flags), the model section it came from, the scale, the source and step.
The Python API, ``evaluate``, ``upscale`` and ``export`` load through here; :mod:`hpc_sr.train` only writes
checkpoints and resumes from them.

A stochastic generator's spread calibration (``hpc-sr evaluate --recalibrate-on val --store-calibration``)
travels with it: an exported G.pt holds the record under ``spread_calibration``; a checkpoint step directory
holds it in a sidecar, ``calibration.json`` (written atomically after the checkpoint, one record per weight
set: ``{"format": "hpc_sr.spread_calibration", "version": 1, "records": {"ema": record, "raw": record}}``),
which :func:`load_generator_payload` reads into the payload for the weights it loads. The record (made by
``hpc_sr.apps.evaluate``) holds ``spread_scales`` (edges, scales, level, block, pixels: what
:class:`hpc_sr.eval.recalibration.SpreadScales` reads), ``fit`` (split, images, samples, antithetic, seed,
data, date), ``weights`` (source, step, ema) and ``check`` (the evaluated split's coverage, calibrated and
raw).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hpc_sr.atomic import atomic_write_text
from hpc_sr.config import ModelConfig, migrate_legacy
from hpc_sr.errors import CheckpointError
from hpc_sr.models.checkpoint_layout import (
    atomic_torch_save,
    consolidated_module_state,
    is_complete,
    latest_step,
    load_trainer_state,
    safe_load,
)
from hpc_sr.models.registry import discriminator_spec, generator_from_spec, generator_spec

GENERATOR_FORMAT = "hpc_sr.generator"
GENERATOR_VERSION = 2
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"  # generators shipped in the package
CALIBRATION_KEY = "spread_calibration"  # the record's key in a generator payload and in export metadata
CALIBRATION_FILE = "calibration.json"  # the sidecar of a checkpoint step directory
CALIBRATION_FORMAT = "hpc_sr.spread_calibration"
CALIBRATION_VERSION = 1


def resolved_model(model: dict[str, Any] | ModelConfig) -> dict[str, Any]:
    """``{"g": generator_spec, "d": discriminator_spec}`` of a model section (v1 flat keys migrated)."""
    if isinstance(model, ModelConfig):
        return {"g": generator_spec(model.g), "d": discriminator_spec(model.d)}
    model = migrate_legacy({"model": dict(model)})["model"]
    return {"g": generator_spec(model.get("g") or {}), "d": discriminator_spec(model.get("d") or {})}


def generator_payload(
    model_cfg: dict[str, Any],
    scale: int,
    state_dict: dict[str, torch.Tensor],
    source: str,
    step: int,
    ema: bool = False,
    data_values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The exported-generator file format: a plain state_dict plus what rebuilds the model without a config.

    ``generator`` holds the resolved spec (arch, full options, bicubic_skip, lr_consistent); ``model`` keeps
    the model section it came from. Files written before v2 hold only ``model`` (flat SRResNet keys): they
    load too. ``data_values`` records the value convention of the training LR (:mod:`hpc_sr.data.values`);
    files without it leave inference to guess per file.
    """
    payload = {
        "format": GENERATOR_FORMAT,
        "version": GENERATOR_VERSION,
        "generator": resolved_model(model_cfg)["g"],
        "model": model_cfg,
        "scale": scale,
        "state_dict": {k: v.detach().float().cpu().contiguous() for k, v in state_dict.items()},
        "source": source,
        "step": step,
        "ema": ema,  # whether these are the EMA weights
    }
    if data_values is not None:
        payload["data_values"] = data_values
    return payload


def payload_generator_spec(payload: dict[str, Any]) -> dict[str, Any]:
    """The generator spec of an exported payload (v2 ``generator``, or v1's flat ``model`` keys)."""
    if isinstance(payload.get("generator"), dict):
        return generator_spec(payload["generator"])
    return resolved_model(payload.get("model") or {})["g"]


def generator_state_from_checkpoint(step_dir: Path, ema: bool = True) -> dict[str, Any]:
    """Generator payload from a training checkpoint (DDP or DeepSpeed)."""
    state = load_trainer_state(step_dir)
    cfg = state["config"]
    used_ema = bool(ema and state.get("ema"))
    if used_ema:
        sd = state["ema"]["module"]
    elif state.get("backend") == "deepspeed":
        sd = consolidated_module_state(step_dir, "g")
    else:
        sd = state["backend_state"]["g"]["model"]
    return generator_payload(
        cfg["model"],
        cfg["data"]["scale"],
        sd,
        str(step_dir),
        int(state["step"]),
        ema=used_ema,
        data_values=state.get("data_values"),
    )


def pretrained_names() -> list[str]:
    """Names of the shipped generators (``--checkpoint deeplense-small``)."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def resolve_generator_source(source: str | Path) -> Path:
    """A shipped pretrained name -> its file (unless a path of that name exists); anything else as a path."""
    path = Path(source)
    if not path.exists() and str(source) in pretrained_names():
        return PRETRAINED_DIR / f"{source}.pt"
    return path


def read_generator_file(path: Path) -> dict[str, Any]:
    """An exported generator file (format and version checked)."""
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != GENERATOR_FORMAT:
        raise CheckpointError(
            f"{path}: not an exported hpc_sr generator (expected format {GENERATOR_FORMAT})"
        )
    if int(payload.get("version", 1)) > GENERATOR_VERSION:
        raise CheckpointError(
            f"{path}: generator file version {payload.get('version')} is newer than this hpc_sr reads "
            f"({GENERATOR_VERSION}); upgrade hpc_sr"
        )
    return payload


def resolve_generator_path(source: str | Path) -> Path:
    """The generator file or complete checkpoint step directory that ``source`` names (a shipped name, a
    G.pt, a step directory, or a run directory: its latest checkpoint)."""
    path = resolve_generator_source(source)
    if not path.exists():
        names = ", ".join(pretrained_names()) or "none"
        raise CheckpointError(f"{path}: no such file or directory (nor a shipped pretrained name: {names})")
    if path.is_file():
        return path
    if (path / "checkpoints").is_dir():
        latest = latest_step(path / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{path}: run directory without a complete checkpoint")
        path = latest
    if not is_complete(path):
        raise CheckpointError(f"{path}: neither a generator file nor a complete checkpoint directory")
    return path


def load_generator_payload(path: str | Path, ema: bool = True) -> dict[str, Any]:
    """Accepts a shipped pretrained name, an exported G.pt, a checkpoint step directory, or a run directory
    (its latest checkpoint); a checkpoint's stored spread calibration (for the weights loaded) comes along."""
    path = resolve_generator_path(path)
    if path.is_file():
        return read_generator_file(path)
    payload = generator_state_from_checkpoint(path, ema=ema)
    record = _read_sidecar(path)["records"].get(_weights_key(bool(payload["ema"])))
    if record is not None:
        payload[CALIBRATION_KEY] = record
    return payload


def _weights_key(ema: bool) -> str:
    return "ema" if ema else "raw"


def _read_sidecar(step_dir: Path) -> dict[str, Any]:
    """A step directory's calibration sidecar (empty when there is none); CheckpointError when corrupt."""
    path = step_dir / CALIBRATION_FILE
    if not path.is_file():
        return {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "records": {}}
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable spread calibration ({exc})") from None
    if not (isinstance(doc, dict) and doc.get("format") == CALIBRATION_FORMAT
            and isinstance(doc.get("records"), dict)):
        raise CheckpointError(f"{path}: not an hpc_sr spread calibration (expected format "
                              f"{CALIBRATION_FORMAT})")
    if int(doc.get("version", 1)) > CALIBRATION_VERSION:
        raise CheckpointError(f"{path}: spread calibration version {doc.get('version')} is newer than this "
                              f"hpc_sr reads ({CALIBRATION_VERSION}); upgrade hpc_sr")
    return doc


def calibration_target(source: str | Path) -> Path:
    """Where :func:`save_calibration` stores for ``source``: the G.pt or checkpoint step directory it names
    (a run directory: its latest checkpoint now). A shipped generator is not changed: CheckpointError."""
    path = resolve_generator_path(source)
    if path.is_file() and path.resolve().parent == PRETRAINED_DIR:
        raise CheckpointError(f"{source}: a shipped generator is not changed; export it "
                              f"(hpc-sr ckpt export {source} --out G.pt) and store the calibration there")
    return path


def save_calibration(source: str | Path, record: dict[str, Any], ema: bool = True) -> Path:
    """Store a spread-calibration record with the generator ``source`` names; returns the file written.

    A checkpoint gets (or updates) its ``calibration.json`` sidecar under the weight set ``ema`` names (the
    other set's record is kept); an exported G.pt is rewritten with the record under ``spread_calibration``.
    Both writes are atomic.
    """
    path = calibration_target(source)
    if path.is_file():
        payload = read_generator_file(path)
        payload[CALIBRATION_KEY] = record
        atomic_torch_save(payload, path)
        return path
    doc = _read_sidecar(path)
    doc["records"][_weights_key(ema)] = record
    atomic_write_text(path / CALIBRATION_FILE, json.dumps(doc, indent=2) + "\n")
    return path / CALIBRATION_FILE


def build_generator_from_payload(payload: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the generator and load its weights (strict: a key mismatch names the keys)."""
    g = generator_from_spec(payload_generator_spec(payload), int(payload["scale"]))
    missing, unexpected = g.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{payload.get('source')}: generator weights do not fit the model config "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return g.eval()


def load_generator(path: str | Path, ema: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(generator in eval mode, payload) from a shipped name, an exported G.pt, a checkpoint or a run dir."""
    payload = load_generator_payload(path, ema=ema)
    return build_generator_from_payload(payload), payload


def export_generator(source: str | Path, out: str | Path, ema: bool = True) -> Path:
    """Write a plain generator file (state_dict + model config) from any generator source, atomically."""
    payload = load_generator_payload(source, ema=ema)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, out)
    return out
