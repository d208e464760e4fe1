"""Generator artifacts: whatever names a trained generator -> the generator and what describes it.

    g, payload = load_generator("deeplense-small")      # a shipped name, an exported G.pt,
    g, payload = load_generator("runs/demo")            # a run directory (its latest checkpoint)
    g, payload = load_generator("runs/demo/checkpoints/step_00000500")   # or a checkpoint step directory

The payload is the exported-generator format (``hpc_sr.generator``): a plain state_dict plus the resolved
generator spec (arch, full options, flags), the model section it came from, the scale, the source and step.
The Python API, ``evaluate``, ``upscale`` and ``export`` load through here; :mod:`hpc_sr.train` only writes
checkpoints and resumes from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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


def load_generator_payload(path: str | Path, ema: bool = True) -> dict[str, Any]:
    """Accepts a shipped pretrained name, an exported G.pt, a checkpoint step directory, or a run directory
    (its latest checkpoint)."""
    path = resolve_generator_source(path)
    if not path.exists():
        names = ", ".join(pretrained_names()) or "none"
        raise CheckpointError(f"{path}: no such file or directory (nor a shipped pretrained name: {names})")
    if path.is_file():
        return read_generator_file(path)
    if (path / "checkpoints").is_dir():
        latest = latest_step(path / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{path}: run directory without a complete checkpoint")
        path = latest
    if not is_complete(path):
        raise CheckpointError(f"{path}: neither a generator file nor a complete checkpoint directory")
    return generator_state_from_checkpoint(path, ema=ema)


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
