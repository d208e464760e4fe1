"""Look after a run's checkpoints: list, export, average, prune, verify.

    hpc-sr ckpt list runs/a                        # sizes, val PSNR, best, latest, temps
    hpc-sr ckpt export runs/a/checkpoints/step_00000500 --out G.pt [--no-ema]
    hpc-sr ckpt average runs/a/checkpoints/step_0000{0400,0500} --out G_avg.pt
    hpc-sr ckpt prune runs/a --keep 2 [--dry-run]  # never removes the best or the latest
    hpc-sr ckpt verify runs/a                      # every checkpoint; or one step dir / G.pt

A checkpoint argument is a step directory, a run directory (its latest checkpoint; ``verify`` checks all of
them) or an exported generator file. Exit status: 0 fine, 1 a problem found by ``verify``, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hpc_sr.apps.cli_common import run_cli
from hpc_sr.config import flatten
from hpc_sr.errors import CheckpointError, HpcSrError
from hpc_sr.models.artifacts import (
    CALIBRATION_KEY,
    build_generator_from_payload,
    export_generator,
    generator_payload,
    load_generator,
    load_generator_payload,
    payload_generator_spec,
)
from hpc_sr.models.checkpoint_layout import (
    META_FILE,
    TRAINER_FILE,
    atomic_torch_save,
    is_complete,
    read_meta,
    safe_load,
)
from hpc_sr.train.checkpoint import CheckpointManager, best_checkpoint

TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
CARRIED = ("data_values", CALIBRATION_KEY)  # records of a generator that its exports carry


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_of(path: str | Path) -> Path:
    """The run directory for a run dir or its checkpoints/ dir."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return path
    if path.name == "checkpoints" and path.is_dir():
        return path.parent
    raise HpcSrError(f"{path}: not a run directory (no checkpoints/ inside)")


def _step_of(name: str) -> int | None:
    tail = name.rsplit("step_", 1)[-1]
    return int(tail) if tail.isdigit() else None


# ----------------------------------------------------------------------------------------------- list
def list_checkpoints(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every checkpoint directory (complete or not, temp directories too), by step."""
    run = run_of(run_dir)
    manager = CheckpointManager(run)
    complete = manager.steps()
    best, latest = best_checkpoint(complete), manager.latest()
    rows = []
    found = [p for p in manager.dir.iterdir() if p.is_dir() and "step_" in p.name]
    for path in sorted(found, key=lambda p: (_step_of(p.name) or 0, p.name)):
        ok = is_complete(path)
        meta: dict[str, Any] = {}
        if ok:
            try:
                meta = read_meta(path)
            except CheckpointError:
                ok = False
        val = meta.get("val") or {}
        rows.append(
            {
                "name": path.name,
                "step": _step_of(path.name),
                "complete": ok,
                "size": dir_size(path),
                "phase": meta.get("phase"),
                "backend": meta.get("backend"),
                "world_size": meta.get("world_size"),
                "psnr": val.get("psnr"),
                "ssim": val.get("ssim"),
                "best": path == best,
                "latest": path == latest,
                "path": str(path),
            }
        )
    return rows


def format_list(rows: list[dict[str, Any]]) -> str:
    header = ("checkpoint", "step", "size", "state", "phase", "backend", "ranks", "val PSNR", "SSIM", "")
    lines = [header]
    for r in rows:
        flags = " ".join(f for f, on in (("best", r["best"]), ("latest", r["latest"])) if on)
        lines.append(
            (
                r["name"],
                str(r["step"] if r["step"] is not None else "?"),
                human(r["size"]),
                "complete" if r["complete"] else "INCOMPLETE",
                r["phase"] or "",
                r["backend"] or "",
                str(r["world_size"] or ""),
                f"{r['psnr']:.3f}" if r["psnr"] is not None else "",
                f"{r['ssim']:.4f}" if r["ssim"] is not None else "",
                flags,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


# ----------------------------------------------------------------------------------------------- export
def export_any(source: str | Path, out: str | Path, fmt: str = "state_dict", ema: bool = True) -> Path:
    """Export a generator from a checkpoint, run dir or G.pt as a state_dict file, TorchScript or ONNX."""
    from hpc_sr.apps.export import export_model

    if fmt == "state_dict":
        return export_generator(source, out, ema=ema)
    model, payload = load_generator(source, ema=ema)
    meta = {"ema": bool(payload.get("ema")), "source": str(source), "step": payload.get("step")}
    meta.update({k: payload[k] for k in CARRIED if payload.get(k) is not None})
    return export_model(model, Path(out), fmt, meta=meta)


# ----------------------------------------------------------------------------------------------- average
def average_payloads(payloads: list[dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    """Uniform average of generator weights of one model config; names the keys that differ otherwise."""
    if not payloads:
        raise HpcSrError("average: no checkpoints given")
    first, src0 = payloads[0], sources[0]
    for payload, src in zip(payloads[1:], sources[1:]):
        spec_a = flatten(payload_generator_spec(first), "model.g.")
        spec_b = flatten(payload_generator_spec(payload), "model.g.")
        diff = [
            f"{k}: {spec_a.get(k)!r} in {src0} vs {spec_b.get(k)!r} in {src}"
            for k in sorted(set(spec_a) | set(spec_b))
            if spec_a.get(k) != spec_b.get(k)
        ]
        if first["scale"] != payload["scale"]:
            diff.append(f"scale: {first['scale']!r} in {src0} vs {payload['scale']!r} in {src}")
        keys_a, keys_b = set(first["state_dict"]), set(payload["state_dict"])
        if keys_a != keys_b:
            diff.append(
                f"weights only in {src0}: {sorted(keys_a - keys_b)[:5]}, only in {src}: "
                f"{sorted(keys_b - keys_a)[:5]}"
            )
        sd_a, sd_b = first["state_dict"], payload["state_dict"]
        diff += [
            f"{k}: shape {tuple(sd_a[k].shape)} in {src0} vs {tuple(sd_b[k].shape)} in {src}"
            for k in sorted(keys_a & keys_b)
            if sd_a[k].shape != sd_b[k].shape
        ]
        if diff:
            raise CheckpointError("average: checkpoints of different models: " + "; ".join(diff))
    averaged = {}
    for key, ref in first["state_dict"].items():
        values = [p["state_dict"][key] for p in payloads]
        if ref.dtype.is_floating_point:
            averaged[key] = (torch.stack([v.double() for v in values]).mean(0)).to(ref.dtype)
        elif all(torch.equal(ref, v) for v in values):
            averaged[key] = ref.clone()
        else:
            raise CheckpointError(f"average: integer tensor {key} differs between {src0} and the others")
    out = generator_payload(
        first["model"],
        int(first["scale"]),
        averaged,
        source="average of " + ", ".join(sources),
        step=max(int(p["step"]) for p in payloads),
        data_values=first.get("data_values"),  # weight averages of one run: the same training data
    )
    out["averaged_from"] = list(sources)
    # the first stored spread calibration, marked with the input it was fitted on: averaged weights spread
    # about as that generator does, not exactly (`evaluate --recalibrate-on val --store-calibration` refits)
    fitted = [(p[CALIBRATION_KEY], s) for p, s in zip(payloads, sources) if p.get(CALIBRATION_KEY)]
    if fitted:
        out[CALIBRATION_KEY] = {**fitted[0][0], "carried_from": fitted[0][1]}
    return out


def average_checkpoints(sources: list[str | Path], out: str | Path, ema: bool = True) -> Path:
    """Load each generator (EMA when present and ``ema``), average, write ``out`` atomically."""
    payloads = [
        load_generator_payload(s, ema=ema)
        for s in tqdm(sources, desc="load", unit="ckpt", disable=len(sources) < 3)
    ]
    averaged = average_payloads(payloads, [str(s) for s in sources])
    build_generator_from_payload(averaged)  # refuse to write weights that do not rebuild the model
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(averaged, out)
    return out


# ----------------------------------------------------------------------------------------------- prune
def prune(run_dir: str | Path, keep: int, dry_run: bool = False) -> list[Path]:
    """Remove complete checkpoints beyond the newest ``keep``, never the best or the latest."""
    if keep < 0:
        raise HpcSrError(f"--keep {keep}: must be >= 0")
    manager = CheckpointManager(run_of(run_dir))
    steps = manager.steps()
    kept = set(steps[len(steps) - keep :]) if keep else set()
    kept |= {p for p in (best_checkpoint(steps), manager.latest()) if p is not None}
    removed = [p for p in steps if p not in kept]
    for path in removed:
        print(f"{'would remove' if dry_run else 'removing'} {path} ({human(dir_size(path))})")
        if not dry_run:
            trash = path.with_name(f".pruned-{path.name}")
            path.rename(trash)  # no longer looks complete before its files go
            shutil.rmtree(trash)
    return removed


# ----------------------------------------------------------------------------------------------- verify
def _check_file(path: Path, own: bool) -> str | None:
    """None if the file reads back, else the problem naming the file.

    Torch files load with weights_only=True and their zip members' CRCs must check. A back-end's own files
    (e.g. DeepSpeed's engine_g/, which pickle library objects and are read by the back-end itself) that
    refuse weights_only pass on intact CRCs alone; hpc_sr's own files (``own``) must load.
    """
    try:
        if path.suffix in TORCH_SUFFIXES:
            try:
                safe_load(path)
            except CheckpointError:
                if own or not zipfile.is_zipfile(path):
                    raise
            if zipfile.is_zipfile(path):  # torch's zip format: CRCs catch flipped bytes in tensor data too
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{path}: corrupt archive member {bad} (CRC mismatch)"
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            path.read_bytes()
    except CheckpointError as exc:
        return str(exc)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"{path}: unreadable: {exc}"
    return None


def verify_step_dir(step_dir: Path) -> list[str]:
    """Problems of one checkpoint directory (empty list: OK)."""
    if not step_dir.is_dir():
        return [f"{step_dir}: not a directory"]
    if not is_complete(step_dir):
        return [f"{step_dir}: incomplete checkpoint (no {META_FILE}, or a temp directory)"]
    problems = []
    try:
        meta = read_meta(step_dir)
    except CheckpointError as exc:
        return [str(exc)]
    if meta.get("step") != _step_of(step_dir.name):
        problems.append(f"{step_dir / META_FILE}: step {meta.get('step')!r} does not match {step_dir.name}")
    state: dict[str, Any] = {}
    try:
        state = CheckpointManager(step_dir.parent.parent).load(step_dir)
        if int(state.get("step", -1)) != meta.get("step"):
            problems.append(
                f"{step_dir / TRAINER_FILE}: step {state.get('step')} but meta.json says {meta.get('step')}"
            )
    except CheckpointError as exc:
        problems.append(str(exc))
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != TRAINER_FILE):
        own = path.parent.name == "rng" or path.parent == step_dir
        if (problem := _check_file(path, own)) is not None:
            problems.append(problem)
    world = int(meta.get("world_size") or state.get("world_size") or 1)
    names = [f"rank_{r:05d}.pt" for r in range(world)]
    missing = [n for n in names if not (step_dir / "rng" / n).is_file()]
    if missing:
        problems.append(
            f"{step_dir / 'rng'}: missing RNG state of {len(missing)} of {world} ranks: "
            f"{', '.join(missing[:4])}"
        )
    if not problems:
        try:
            build_generator_from_payload(load_generator_payload(step_dir))
        except (CheckpointError, KeyError, RuntimeError) as exc:
            problems.append(f"{step_dir}: generator cannot be rebuilt: {exc}")
    return problems


def verify(target: str | Path) -> dict[str, list[str]]:
    """{checkpoint: problems} for a step directory, every checkpoint of a run, or an exported generator."""
    target = Path(target)
    if target.is_file():
        try:
            build_generator_from_payload(load_generator_payload(target))
            return {str(target): []}
        except (CheckpointError, KeyError, RuntimeError) as exc:
            return {str(target): [str(exc)]}
    if (target / "checkpoints").is_dir() or target.name == "checkpoints":
        manager = CheckpointManager(run_of(target))
        dirs = sorted(p for p in manager.dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
        if not dirs:
            return {str(manager.dir): [f"{manager.dir}: no checkpoints"]}
        bar = tqdm(dirs, desc="verify", unit="ckpt", disable=len(dirs) < 3)
        return {str(d): verify_step_dir(d) for d in bar}
    if not target.exists():
        raise HpcSrError(f"{target}: no such file or directory")
    return {str(target): verify_step_dir(target)}


# ----------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpc-sr ckpt", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="checkpoints of a run: step, size, val metrics, best/latest, incomplete")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("export", help="write a generator file: G.pt (state_dict), TorchScript or ONNX")
    s.add_argument(
        "checkpoint", help="step directory, run directory (its latest checkpoint) or exported G.pt"
    )
    s.add_argument("--out", required=True)
    s.add_argument(
        "--format",
        default="state_dict",
        choices=["state_dict", "torchscript", "onnx"],
        help="state_dict: needs hpc_sr to load; torchscript / onnx: torch or onnxruntime alone, "
        "dynamic height and width (default: state_dict)",
    )
    s.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="EMA weights when the checkpoint has them (default) or the raw generator",
    )
    s = sub.add_parser("average", help="uniform average of the generators of several checkpoints")
    s.add_argument("checkpoints", nargs="+", help="step directories, run directories or exported G.pt files")
    s.add_argument("--out", required=True)
    s.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    s = sub.add_parser("prune", help="remove old checkpoints, keeping the newest K, the best and the latest")
    s.add_argument("run_dir")
    s.add_argument("--keep", type=int, required=True)
    s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("verify", help="load every file safely and check meta.json and the RNG files")
    s.add_argument("checkpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


def _command(args: argparse.Namespace) -> int:
    if args.command == "list":
        rows = list_checkpoints(args.run_dir)
        print(json.dumps(rows, indent=2) if args.json else format_list(rows))
    elif args.command == "export":
        out = export_any(args.checkpoint, args.out, args.format, ema=args.ema)
        kind = "EMA weights where the checkpoint has them" if args.ema else "raw generator weights"
        print(f"wrote {out} ({args.format}, {human(out.stat().st_size)}, {kind}, from {args.checkpoint})")
    elif args.command == "average":
        out = average_checkpoints(args.checkpoints, args.out, ema=args.ema)
        print(f"wrote {out}: average of {len(args.checkpoints)} generators")
    elif args.command == "prune":
        removed = prune(args.run_dir, args.keep, args.dry_run)
        print(f"{'would remove' if args.dry_run else 'removed'} {len(removed)} checkpoint(s)")
    else:
        report = verify(args.checkpoint)
        for name, problems in report.items():
            print(f"OK    {name}" if not problems else f"FAIL  {name}")
            for problem in problems:
                print(f"      {problem}")
        return 1 if any(report.values()) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
