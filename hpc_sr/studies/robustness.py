"""Cross-preset robustness: generators trained on one simulator preset, evaluated on the test split of every
preset, beside bicubic and each split's noise ceiling (docs/RESULTS.md, "Robustness across presets").

    python -m hpc_sr.studies robustness --out WORK [--presets deeplense_sr,model_i,wide] [--num 3000]
        [--hr-size 150] [--steps 1200] [--limit 300] [--model deeplense_sr=deeplense-small]

For each preset: simulates WORK/data/<preset> (seed 0, 80/10/10) unless it exists, and trains the zoo's best
small generator (RRDB 32 ch x 1 block + LR consistency where LR is the block mean of HR, the zoo recipe of
``hpc_sr.studies zoo``) on its train split unless ``--model PRESET=RUN`` names a run directory or shipped
generator to use instead. Then every model is evaluated on every preset's test split. Runs are resumable (a
finished run is evaluated again, not retrained). Writes WORK/robustness.json and WORK/robustness.md: a matrix
of PSNR gains over bicubic (and their fraction of the noise ceiling) with the trained-on preset as rows and
the tested-on preset as columns, and the SSIM and flux error beside bicubic's; then each cell's gain as a
share of the in-domain model's gain on that preset (the diagonal), e.g. for a domain-randomised model
(``randomized``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from hpc_sr.apps.evaluate import evaluate
from hpc_sr.atomic import atomic_write_text
from hpc_sr.data.presets import resolve_preset
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.errors import DataError
from hpc_sr.studies.common import (
    StudyArgumentError,
    add_limit,
    add_out,
    parse_models,
    study_parser,
    write_json,
)
from hpc_sr.studies.zoo import ZOO, overrides, train_once

__all__ = ["ARCH", "cell", "check_presets", "main", "markdown", "parse_preset_models"]

ARCH = "rrdb"
PRESET_FORM = "PRESET=RUN"


def check_presets(names: Sequence[str], flag: str) -> list[str]:
    """``names`` if each is a lensing preset, else a StudyArgumentError naming ``flag`` and the preset."""
    for name in names:
        try:
            resolve_preset(name)
        except DataError as exc:
            raise StudyArgumentError(f"{flag}: {exc}") from None
    return list(names)


def parse_preset_models(specs: Sequence[str]) -> dict[str, str]:
    """``--model PRESET=RUN`` arguments -> {preset: run}; an unknown or repeated preset is an error."""
    models = parse_models(specs, "--model", form=PRESET_FORM, bare=False)
    check_presets(list(models), "--model")
    return models


def ensure_data(root: Path, preset: str, num: int, hr_size: int = 150) -> Path:
    """WORK/data/<preset>, simulated once (seed 0)."""
    data = root / "data" / preset
    if not (data / "manifest.json").is_file():
        simulate_to_shards(data, num=num, preset=preset, seed=0, shard_size=2048, hr_size=hr_size)
    return data


def ensure_model(root: Path, preset: str, data: Path, steps: int) -> Path:
    """The zoo recipe trained on ``data`` (resumed / skipped when finished): WORK/runs/<preset>. The exact
    LR-consistency layer only where the preset's LR is the block mean of HR (a two-instrument preset's is
    not: hpc_sr.data.lr_relation)."""
    runs = root / "runs"
    lrc = resolve_preset(preset).lr_is_mean
    train_once(overrides(ARCH, ZOO[ARCH], data, runs, preset, steps, lr_consistent=lrc), runs / preset, steps)
    return runs / preset


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
    diagonal = {c: table[c][c]["gain_db"] for c in presets if c in table}
    if len(diagonal) > 1:  # each cell's gain as a share of the in-domain model's on that preset
        lines += ["", "Share of the in-domain model's gain (its own preset's row) kept:", "", head,
                  "|---" * (len(presets) + 1) + "|"]  # fmt: skip
        for row in table:
            shares = [f"{table[row][c]['gain_db'] / diagonal[c]:.0%}" if diagonal.get(c) else "n/a"
                      for c in presets]  # fmt: skip
            lines.append(f"| {row} | " + " | ".join(shares) + " |")
        lines.append("")
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


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = study_parser("robustness", __doc__ or "", prog)
    add_out(ap, None, "work directory: data/<preset>, runs/<preset>, robustness.json, robustness.md")
    ap.add_argument("--presets", default="deeplense_sr,model_i,wide")
    ap.add_argument("--num", type=int, default=3000, help="pairs simulated per preset")
    ap.add_argument("--hr-size", type=int, default=150, help="HR side of the simulated sets")
    ap.add_argument("--steps", type=int, default=1200, help="training steps per preset (zoo recipe)")
    add_limit(ap, 300, "test images evaluated per preset")
    ap.add_argument("--model", action="append", default=[], metavar=PRESET_FORM,
                    help="use this model (run directory or shipped name) for PRESET; repeatable")  # fmt: skip
    a = ap.parse_args(argv)
    try:
        presets = check_presets([p for p in a.presets.split(",") if p], "--presets")
        given = parse_preset_models(a.model)
    except StudyArgumentError as exc:
        ap.error(str(exc))
    torch.set_num_threads(1)
    data = {p: ensure_data(a.out, p, a.num, a.hr_size) for p in presets}
    models = {p: given.get(p) or str(ensure_model(a.out, p, data[p], a.steps)) for p in presets}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for row in presets:
        table[row] = {}
        for col in presets:
            res = evaluate(models[row], data[col], split="test", limit=a.limit, quiet=True)
            table[row][col] = cell(res)
            print(json.dumps({"trained_on": row, "tested_on": col, **table[row][col]}), flush=True)
    write_json(a.out / "robustness.json", {"models": models, "table": table})
    md = markdown(presets, table)
    atomic_write_text(a.out / "robustness.md", md)
    print(md)
    return 0
