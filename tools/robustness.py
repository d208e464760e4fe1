"""Cross-preset robustness: generators trained on one simulator preset, evaluated on the test split of every
preset, beside bicubic and each split's noise ceiling (docs/RESULTS.md, "Robustness across presets").

    python tools/robustness.py --out WORK [--presets deeplense_sr,model_i,wide] [--num 3000] [--steps 1200]
        [--limit 300] [--model deeplense_sr=deeplense-small]

For each preset: simulates WORK/data/<preset> (seed 0, 80/10/10) unless it exists, and trains the zoo's
best small generator (RRDB 32 ch x 1 block + LR consistency, the zoo recipe of tools/zoo_budget.py) on its
train split unless ``--model PRESET=RUN`` names a run directory or shipped generator to use instead. Then
every model is evaluated on every preset's test split. Runs are resumable (a finished run is evaluated
again, not retrained). Writes WORK/robustness.json and WORK/robustness.md: a matrix of PSNR gains over
bicubic (and their fraction of the noise ceiling) with the trained-on preset as rows and the tested-on
preset as columns, and the SSIM and flux error beside bicubic's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hpc_sr.apps.evaluate import evaluate
from hpc_sr.apps.runs import read_run
from hpc_sr.config import load_config
from hpc_sr.data.lensing import PRESETS
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.train.entry import run_training

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.zoo_budget import ZOO, overrides  # noqa: E402

ARCH = "rrdb"


def parse_models(items: list[str]) -> dict[str, str]:
    """``PRESET=RUN`` pairs -> {preset: run}; unknown presets are an error naming the item."""
    out = {}
    for item in items:
        preset, sep, run = item.partition("=")
        if not sep or not run:
            raise SystemExit(f"--model {item!r}: expected PRESET=RUN (a run directory or a shipped name)")
        if preset not in PRESETS:
            raise SystemExit(f"--model {item!r}: unknown preset {preset!r}; valid: {sorted(PRESETS)}")
        out[preset] = run
    return out


def ensure_data(root: Path, preset: str, num: int) -> Path:
    """WORK/data/<preset>, simulated once (seed 0)."""
    data = root / "data" / preset
    if not (data / "manifest.json").is_file():
        simulate_to_shards(data, num=num, preset=preset, seed=0, shard_size=2048)
    return data


def ensure_model(root: Path, preset: str, data: Path, steps: int) -> Path:
    """The zoo recipe trained on ``data`` (resumed / skipped when finished): WORK/runs/<preset>."""
    runs, name = root / "runs", preset
    cfg = load_config(None, overrides(ARCH, ZOO[ARCH], data, runs, name, steps, lr_consistent=True))
    finished = (runs / name / "checkpoints" / "latest").is_file() and read_run(runs / name).train.get(steps)
    if not finished:
        run_training(cfg, resume="auto")
    return runs / name


def cell(res: dict) -> dict[str, float]:
    """The figures of one (model, test split) evaluation that the table shows."""
    m, b = res["model"], res["bicubic"]
    out = {
        "psnr": m["psnr"], "bicubic_psnr": b["psnr"], "gain_db": m["psnr"] - b["psnr"],
        "ssim": m["ssim"], "bicubic_ssim": b["ssim"], "flux_err": m["flux_err"],
        "bicubic_flux_err": b["flux_err"], "n": res["n"],
    }  # fmt: skip
    if res.get("ceiling"):
        out.update(ceiling_gain_db=res["ceiling_gain_db"], ceiling_fraction=res["ceiling_fraction"])
    return out


def markdown(presets: list[str], table: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows: trained on; columns: tested on; cells: gain (fraction of the ceiling), SSIM / bicubic SSIM."""
    head = "| trained on \\ tested on | " + " | ".join(presets) + " |"
    lines = [head, "|---" * (len(presets) + 1) + "|"]
    for row in table:
        cells = []
        for col in presets:
            c = table[row][col]
            frac = f" ({c['ceiling_fraction']:.0%})" if "ceiling_fraction" in c else ""
            cells.append(
                f"{c['gain_db']:+.3f} dB{frac}, SSIM {c['ssim']:.4f} / {c['bicubic_ssim']:.4f}, "
                f"flux {c['flux_err']:.1e} / {c['bicubic_flux_err']:.1e}"
            )
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    first = next(iter(table.values()))
    lines.append(
        "| bicubic PSNR; noise ceiling gain | "
        + " | ".join(
            f"{first[c]['bicubic_psnr']:.3f} dB; +{first[c].get('ceiling_gain_db', float('nan')):.3f} dB"
            for c in presets
        )
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--presets", default="deeplense_sr,model_i,wide")
    ap.add_argument("--num", type=int, default=3000, help="pairs simulated per preset")
    ap.add_argument("--steps", type=int, default=1200, help="training steps per preset (zoo recipe)")
    ap.add_argument("--limit", type=int, default=300, help="test images evaluated per preset")
    ap.add_argument("--model", action="append", default=[], help="PRESET=RUN: use this model for PRESET")
    a = ap.parse_args(argv)
    presets = [p for p in a.presets.split(",") if p]
    for p in presets:
        if p not in PRESETS:
            raise SystemExit(f"--presets: unknown preset {p!r}; valid: {sorted(PRESETS)}")
    given = parse_models(a.model)
    torch.set_num_threads(1)
    data = {p: ensure_data(a.out, p, a.num) for p in presets}
    models = {p: given.get(p) or str(ensure_model(a.out, p, data[p], a.steps)) for p in presets}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for row in presets:
        table[row] = {}
        for col in presets:
            res = evaluate(models[row], data[col], split="test", limit=a.limit, quiet=True)
            table[row][col] = cell(res)
            print(json.dumps({"trained_on": row, "tested_on": col, **table[row][col]}), flush=True)
    (a.out / "robustness.json").write_text(json.dumps({"models": models, "table": table}, indent=2))
    md = markdown(presets, table)
    (a.out / "robustness.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
