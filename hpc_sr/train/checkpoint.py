"""Checkpoints: atomic step directories, ``latest`` written last, keep-last-K plus best, exact resume.

Layout of one run::

    runs/<name>/checkpoints/
        step_00000500/            trainer.pt (rank 0: step, phase, sampler position, EMA, back-end state),
                                  rng/rank_00000.pt ... (every rank), meta.json (written last), back-end files
        latest                    text: "step_00000500" (replaced atomically after the directory is complete)

A directory is written as ``.tmp-step_XXXXXXXX`` and renamed when complete, so a half-written checkpoint is
never taken for a good one; stale temp directories are removed at the next save. Loading uses
``torch.load(weights_only=True)``: a file carrying arbitrary pickled objects is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from hpc_sr.atomic import atomic_open, atomic_write_text, fsync_dir
from hpc_sr.config import ModelConfig, flatten, migrate_legacy
from hpc_sr.dist import collectives as du
from hpc_sr.errors import CheckpointError
from hpc_sr.models.registry import discriminator_spec, generator_from_spec, generator_spec
from hpc_sr.train import faults

FORMAT = "hpc_sr.checkpoint"
GENERATOR_FORMAT = "hpc_sr.generator"
VERSION = 1  # trainer.pt layout (unchanged by v2: its config is migrated on load)
GENERATOR_VERSION = 2
TRAINER_FILE = "trainer.pt"
META_FILE = "meta.json"
LATEST = "latest"


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


class CheckpointManager:
    """Saves and finds the checkpoints of one run; every rank constructs one and calls :meth:`save`."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3, rank: int = 0) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)
        self.rank = rank

    # -- finding ------------------------------------------------------------------------------------------
    def steps(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("step_*") if is_complete(p))

    def latest(self) -> Path | None:
        """The directory ``latest`` names, or the newest complete one if ``latest`` is missing or broken."""
        pointer = self.dir / LATEST
        if pointer.is_file():
            candidate = self.dir / pointer.read_text().strip()
            if is_complete(candidate):
                return candidate
        steps = self.steps()
        return steps[-1] if steps else None

    def resolve(self, resume: str) -> Path | None:
        """``never`` -> None; ``auto`` -> latest if any; else a path (step dir or run dir) that must exist."""
        if resume == "never":
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if (path / "checkpoints").is_dir():
            found = CheckpointManager(path).latest()
            if found is None:
                raise CheckpointError(
                    f"--resume {resume}: no complete checkpoint under {path / 'checkpoints'}"
                )
            return found
        if not is_complete(path):
            raise CheckpointError(f"--resume {resume}: not a complete checkpoint directory (no {META_FILE})")
        return path

    # -- saving -------------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        backend: Any,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any],
        meta: dict[str, Any],
        device: torch.device,
    ) -> Path:
        """Collective save; raises CheckpointError on every rank if any rank failed (nothing half-written)."""
        final = self.dir / step_dirname(step)
        tmp = self.dir / f".tmp-{step_dirname(step)}"
        error: str | None = None
        try:
            if self.rank == 0:
                self.dir.mkdir(parents=True, exist_ok=True)
                fsync_dir(self.dir.parent)  # checkpoints/ itself is durable in the run directory
                self._remove_stale_temps()
                tmp.mkdir()
        except OSError as exc:
            error = f"cannot create {tmp}: {exc}"
        if du.any_rank(error is not None, device):
            raise CheckpointError(error or f"checkpoint {final}: rank 0 could not create the directory")
        if self.rank == 0:
            faults.save_point("created", step, tmp)
        try:
            (tmp / "rng").mkdir(exist_ok=True)
            atomic_torch_save(rank_state, tmp / "rng" / f"rank_{self.rank:05d}.pt")
        except OSError as exc:
            error = f"rank {self.rank}: cannot write RNG state into {tmp}: {exc}"
        backend_state = backend.save(tmp)  # collective for DeepSpeed: every rank must call it
        du.barrier()
        if self.rank == 0:
            faults.save_point("rank_files", step, tmp)
        if self.rank == 0 and error is None:
            try:
                atomic_torch_save(
                    {**trainer_state, "backend_state": backend_state, "format": FORMAT, "version": VERSION},
                    tmp / TRAINER_FILE,
                )
                faults.save_point("trainer_file", step, tmp)
                atomic_write_text(
                    tmp / META_FILE, json.dumps({**meta, "step": step, "time": time.time()}, indent=2)
                )
                replaced = None
                if final.exists():  # re-saving a step after a resume: swap the old directory out
                    replaced = final.with_name(f".pruned-{final.name}")
                    os.replace(final, replaced)
                os.replace(tmp, final)
                fsync_dir(
                    self.dir
                )  # step_N durable before `latest` names it (latest's own rename fsyncs too)
                if replaced is not None:
                    shutil.rmtree(replaced, ignore_errors=True)
                faults.save_point("renamed", step, final)
                atomic_write_text(self.dir / LATEST, final.name + "\n")
                self._prune()
            except OSError as exc:
                error = f"cannot write checkpoint {final}: {exc}"
        if du.any_rank(error is not None, device):
            raise CheckpointError(error or f"checkpoint {final}: another rank failed to save")
        return final

    def _remove_stale_temps(self) -> None:
        for pattern in (".tmp-step_*", ".pruned-step_*"):
            for stale in self.dir.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)

    def _prune(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.keep_last :])
        best = best_checkpoint(steps)
        if best is not None:
            keep.add(best)
        latest = self.latest()
        if latest is not None:
            keep.add(latest)
        for path in steps:
            if path not in keep:
                remove_checkpoint_dir(path)

    # -- loading ------------------------------------------------------------------------------------------
    def load(self, step_dir: Path) -> dict[str, Any]:
        """Trainer state of a checkpoint (rank-independent part)."""
        state = safe_load(step_dir / TRAINER_FILE)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{step_dir / TRAINER_FILE}: not an hpc_sr checkpoint")
        if state.get("version") != VERSION:
            raise CheckpointError(
                f"{step_dir / TRAINER_FILE}: checkpoint format version {state.get('version')}, "
                f"this hpc_sr reads version {VERSION}"
            )
        return state

    def load_rank_state(self, step_dir: Path) -> dict[str, Any] | None:
        """This rank's RNG and data-stream state (None when the checkpoint was written by fewer ranks)."""
        path = step_dir / "rng" / f"rank_{self.rank:05d}.pt"
        return safe_load(path) if path.is_file() else None


def remove_checkpoint_dir(path: Path) -> None:
    """Rename out of the ``step_*`` namespace first, so a half-deleted directory never looks complete."""
    doomed = path.with_name(f".pruned-{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def best_checkpoint(steps: list[Path]) -> Path | None:
    """The checkpoint with the highest validation PSNR recorded in its meta.json."""
    best, best_psnr = None, float("-inf")
    for path in steps:
        psnr = (read_meta(path).get("val") or {}).get("psnr")
        if psnr is not None and psnr > best_psnr:
            best, best_psnr = path, psnr
    return best


def resolved_model(model: dict[str, Any] | ModelConfig) -> dict[str, Any]:
    """``{"g": generator_spec, "d": discriminator_spec}`` of a model section (v1 flat keys migrated)."""
    if isinstance(model, ModelConfig):
        return {"g": generator_spec(model.g), "d": discriminator_spec(model.d)}
    model = migrate_legacy({"model": dict(model)})["model"]
    return {"g": generator_spec(model.get("g") or {}), "d": discriminator_spec(model.get("d") or {})}


def model_config_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "model.") -> list[str]:
    """``model.g.options.channels: checkpoint 8 vs config 16`` for every key that differs."""
    a, b = flatten(saved, prefix), flatten(current, prefix)
    return [
        f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def check_model_config(
    state: dict[str, Any], model_cfg: ModelConfig, scale: int, source: Path, generator_only: bool = False
) -> None:
    """Refuse a checkpoint whose model config differs from the run's, naming the keys."""
    saved_cfg = state.get("config", {})
    saved, current = resolved_model(saved_cfg.get("model", {})), resolved_model(model_cfg)
    if generator_only:
        saved, current = {"g": saved["g"]}, {"g": current["g"]}
    diff = model_config_diff(saved, current)
    saved_scale = saved_cfg.get("data", {}).get("scale", scale)
    if saved_scale != scale:
        diff.append(f"data.scale: checkpoint {saved_scale!r} vs config {scale!r}")
    if diff:
        raise CheckpointError(f"{source}: checkpoint of another model config: " + "; ".join(diff))


# ----------------------------------------------------------------------------------------------- generators
def generator_payload(
    model_cfg: dict[str, Any],
    scale: int,
    state_dict: dict[str, torch.Tensor],
    source: str,
    step: int,
    ema: bool = False,
) -> dict[str, Any]:
    """The exported-generator file format: a plain state_dict plus what rebuilds the model without a config.

    ``generator`` holds the resolved spec (arch, full options, bicubic_skip, lr_consistent); ``model`` keeps
    the
    model section it came from. Files written before v2 hold only ``model`` (flat SRResNet keys): they load
    too.
    """
    return {
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


def payload_generator_spec(payload: dict[str, Any]) -> dict[str, Any]:
    """The generator spec of an exported payload (v2 ``generator``, or v1's flat ``model`` keys)."""
    if isinstance(payload.get("generator"), dict):
        return generator_spec(payload["generator"])
    return resolved_model(payload.get("model") or {})["g"]


def generator_state_from_checkpoint(step_dir: Path, ema: bool = True) -> dict[str, Any]:
    """Generator payload from a training checkpoint (DDP or DeepSpeed)."""
    state = CheckpointManager(step_dir.parent.parent).load(step_dir)
    cfg = state["config"]
    sd: dict[str, torch.Tensor] | None = None
    used_ema = bool(ema and state.get("ema"))
    if used_ema:
        sd = state["ema"]["module"]
    elif state.get("backend") == "deepspeed":
        from hpc_sr.train.backends.deepspeed import consolidated_module_state

        sd = consolidated_module_state(step_dir, "g")
    else:
        sd = state["backend_state"]["g"]["model"]
    return generator_payload(
        cfg["model"], cfg["data"]["scale"], sd, str(step_dir), int(state["step"]), ema=used_ema
    )


PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"  # generators shipped in the package


def pretrained_names() -> list[str]:
    """Names of the shipped generators (``--checkpoint deeplense-small``)."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def resolve_generator_source(source: str | Path) -> Path:
    """A shipped pretrained name -> its file (unless a path of that name exists); anything else as a path."""
    path = Path(source)
    if not path.exists() and str(source) in pretrained_names():
        return PRETRAINED_DIR / f"{source}.pt"
    return path


def load_generator_payload(path: str | Path, ema: bool = True) -> dict[str, Any]:
    """Accepts a shipped pretrained name, an exported G.pt, a checkpoint step directory, or a run directory
    (its latest checkpoint)."""
    path = resolve_generator_source(path)
    if not path.exists():
        names = ", ".join(pretrained_names()) or "none"
        raise CheckpointError(f"{path}: no such file or directory (nor a shipped pretrained name: {names})")
    if path.is_file():
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
    if (path / "checkpoints").is_dir():
        latest = CheckpointManager(path).latest()
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
    """(generator in eval mode, payload) from an exported G.pt, a checkpoint or a run directory."""
    payload = load_generator_payload(path, ema=ema)
    return build_generator_from_payload(payload), payload


def export_generator(source: str | Path, out: str | Path, ema: bool = True) -> Path:
    """Write a plain generator file (state_dict + model config) from a checkpoint, atomically."""
    payload = load_generator_payload(source, ema=ema)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, out)
    return out
