"""Ship a trained generator inside the package: hpc_sr/pretrained/<name>.pt (+ <name>.json, the same record).

    python tools/make_pretrained.py RUN_DIR --data DATA --name deeplense-small --command "hpc-sr train ..."

Exports the run's EMA generator (state_dict format), evaluates it on the data set's test split beside bicubic
and
the split's noise ceiling (hpc_sr.studies.ceiling), and records in the file: the training command, the data
set (path, preset, seed, counts), the metrics and the gain as a fraction of the ceiling. Refuses files over 1
MB.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hpc_sr.apps.evaluate import evaluate
from hpc_sr.atomic import atomic_write_text
from hpc_sr.data.shards import load_manifest
from hpc_sr.models.artifacts import PRETRAINED_DIR, load_generator_payload
from hpc_sr.models.checkpoint_layout import atomic_torch_save
from hpc_sr.studies.ceiling import ceiling as noise_ceiling

MAX_BYTES = 1_000_000


def portable(provenance: dict) -> dict:
    """The data set's provenance without machine-specific paths or command lines (the file is shipped)."""
    keep = ("command", "preset", "seed", "hr_size", "num", "package_version", "date")
    return {k: provenance[k] for k in keep if k in provenance}


def values_note(provenance: dict) -> str:
    """What the model's LR input is: the DeepLense convention, or a two-instrument preset's LR."""
    from hpc_sr.data.presets import PRESETS

    preset = PRESETS.get(str(provenance.get("preset", "")))
    if preset is not None and preset.lr_instrument is not None:
        inst = preset.lr_instrument
        lo, hi = inst.psf_fwhm.support
        ps = preset.pixel_scale
        return (
            f'LR: a ground-based image at {2 * ps:g}"/px with {lo:g}-{hi:g}" seeing of a space-based HR '
            f"at {ps:g}\"/px (preset {preset.name}), in [0, 1] scaled by HR's peak; hpc-sr upscale handles "
            "units"
        )
    return "LR in [0, 1] as in the DeepLense set (peak-normalised); hpc-sr upscale handles units"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", required=True, type=Path, help="the shard directory it was trained on")
    ap.add_argument("--name", default="deeplense-small")
    ap.add_argument("--command", required=True, help="the command that trained it (recorded)")
    ap.add_argument("--limit", type=int, default=600)
    a = ap.parse_args(argv)
    payload = load_generator_payload(a.run, ema=True)
    result = evaluate(a.run, a.data, split="test", limit=a.limit, quiet=True)
    ceiling = noise_ceiling(str(a.data), "test", a.limit)
    m, b = result["model"], result["bicubic"]
    gain, ceiling_gain = m["psnr"] - b["psnr"], ceiling["ceiling"]["psnr"] - ceiling["bicubic"]["psnr"]
    manifest = load_manifest(a.data)
    record = {
        "name": a.name,
        "generator": payload["generator"],
        "scale": payload["scale"],
        "trained_with": a.command,
        "data": {"count": manifest.count, "split_seed": manifest.split_seed,
                 "split": {k: len(v) for k, v in manifest.split.items()},
                 "provenance": portable(manifest.provenance)},
        "test": {"n": result["n"], "model": m, "bicubic": b, "ceiling": ceiling["ceiling"], "gain_db": gain,
                 "ceiling_gain_db": ceiling_gain, "ceiling_fraction": gain / ceiling_gain},
        "values": values_note(manifest.provenance),
        "data_values": payload.get("data_values"),  # the training LR range hpc-sr upscale follows
    }  # fmt: skip
    payload = {**payload, "pretrained": record, "source": f"pretrained {a.name}"}
    out = PRETRAINED_DIR / f"{a.name}.pt"
    PRETRAINED_DIR.mkdir(exist_ok=True)
    atomic_torch_save(payload, out)
    if out.stat().st_size > MAX_BYTES:
        out.unlink()
        raise SystemExit(
            f"{out}: {out.stat().st_size} bytes is over the {MAX_BYTES} limit for a shipped model"
        )
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2, default=str) + "\n")
    print(
        f"wrote {out} ({out.stat().st_size:,} bytes): gain {gain:+.3f} dB = {gain / ceiling_gain:.0%} of the "
        f"ceiling on {result['n']} test images"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
