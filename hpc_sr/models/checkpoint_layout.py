"""The on-disk layout of a training checkpoint, as far as reading it needs (train/ writes it).

    runs/<name>/checkpoints/
        step_00000500/            trainer.pt (rank 0: step, phase, config, EMA, back-end state), meta.json
                                  (written last), rng/rank_00000.pt ... (every rank), back-end files
                                  (ddp: inside trainer.pt; deepspeed: engine_<name>/state/...)
        latest                    text: "step_00000500" (replaced atomically after the directory is complete)

Everything here reads files only: no process group, no trainer. :mod:`hpc_sr.train.checkpoint` saves, prunes
and resumes; :mod:`hpc_sr.models.artifacts` turns a checkpoint into a generator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hpc_sr.atomic import atomic_open
from hpc_sr.errors import CheckpointError

FORMAT = "hpc_sr.checkpoint"
VERSION = 1  # trainer.pt layout (unchanged by v2 and v3: its config is migrated on load)
TRAINER_FILE = "trainer.pt"
META_FILE = "meta.json"
LATEST = "latest"
DEEPSPEED_TAG = "state"  # the DeepSpeed checkpoint tag inside each engine directory
DEEPSPEED_MODEL_STATES = "mp_rank_00_model_states.pt"


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same directory, fsync, rename."""
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def safe_load(path: Path) -> Any:
    """torch.load with weights_only=True and a clear error naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"{path}: cannot be loaded safely (weights_only=True): {exc}") from None


def is_complete(step_dir: Path) -> bool:
    """A finished checkpoint directory: renamed into place and holding its meta.json."""
    return step_dir.is_dir() and not step_dir.name.startswith(".") and (step_dir / META_FILE).is_file()


def read_meta(step_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((step_dir / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{step_dir / META_FILE}: unreadable checkpoint metadata: {exc}") from None


def complete_steps(checkpoints: Path) -> list[Path]:
    """Complete checkpoint directories under ``checkpoints/``, oldest first."""
    if not checkpoints.is_dir():
        return []
    return sorted(p for p in checkpoints.glob("step_*") if is_complete(p))


def latest_step(checkpoints: Path) -> Path | None:
    """The directory ``latest`` names, or the newest complete one if ``latest`` is missing or broken."""
    pointer = checkpoints / LATEST
    if pointer.is_file():
        candidate = checkpoints / pointer.read_text().strip()
        if is_complete(candidate):
            return candidate
    steps = complete_steps(checkpoints)
    return steps[-1] if steps else None


def load_trainer_state(step_dir: Path) -> dict[str, Any]:
    """The rank-independent trainer state of a checkpoint (``trainer.pt``), format and version checked."""
    state = safe_load(step_dir / TRAINER_FILE)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{step_dir / TRAINER_FILE}: not an hpc_sr checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{step_dir / TRAINER_FILE}: checkpoint format version {state.get('version')}, "
            f"this hpc_sr reads version {VERSION}"
        )
    return state


# ----------------------------------------------------------------------------------------------- deepspeed
def engine_dir(directory: Path, name: str) -> Path:
    """Where the DeepSpeed back-end saves engine ``name`` inside a step directory."""
    return Path(directory) / f"engine_{name}"


def plain_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict without DDP/DeepSpeed's ``module.`` prefix, fp32, on CPU, contiguous."""
    return {k.removeprefix("module."): v.detach().float().cpu().contiguous() for k, v in sd.items()}


def _zero0_master_weights(saved: dict[str, Any]) -> dict[str, torch.Tensor]:
    """ZeRO 0 with bf16/fp16: the fp32 master copies kept by DeepSpeed's (unfused) optimiser wrapper, named
    after the module parameters (same order: one param group built from ``module.parameters()``)."""
    opt = saved.get("optimizer")
    if not isinstance(opt, dict) or "fp32_groups" not in opt:
        return {}
    masters = [t for group in opt["fp32_groups"] for t in group]
    buffers = set(saved.get("buffer_names") or [])
    names = [k for k in saved["module"] if k not in buffers]
    if len(names) != len(masters) or any(saved["module"][n].shape != m.shape for n, m in zip(names, masters)):
        return {}  # not the layout we know: keep the module weights
    return plain_state(dict(zip(names, masters)))


def consolidated_module_state(step_dir: str | Path, name: str) -> dict[str, torch.Tensor]:
    """Plain fp32 state_dict of DeepSpeed engine ``name`` from a checkpoint step directory (any ZeRO stage
    <= 2), on CPU, without a process group: the fp32 master weights for ZeRO 1/2, the saved module weights
    for ZeRO 0."""
    edir = engine_dir(Path(step_dir), name)
    states = edir / DEEPSPEED_TAG / DEEPSPEED_MODEL_STATES
    if not states.is_file():
        raise CheckpointError(f"{step_dir}: no DeepSpeed checkpoint of {name!r} ({states} is missing)")
    try:
        saved = torch.load(states, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"{states}: cannot be read: {exc}") from None
    module_sd = plain_state(saved["module"])
    if not list((edir / DEEPSPEED_TAG).glob("*zero_pp_rank_*optim_states.pt")):
        return {**module_sd, **_zero0_master_weights(saved)}  # ZeRO 0: module weights, fp32 masters if any
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    master = plain_state(get_fp32_state_dict_from_zero_checkpoint(str(edir), tag=DEEPSPEED_TAG))
    return {k: master.get(k, v) for k, v in module_sd.items()}  # buffers come from the module states
