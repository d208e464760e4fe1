"""Downstream science check: how much of the bicubic-to-HR error in measuring the lens each SR model closes.

A small CNN regressor (hpc_sr.eval.downstream) is trained on the HR images of DATA's train split to predict
the Einstein radius theta_E and the lens ellipticity (e1, e2) recorded by the simulator, then scored on the
test split's HR, bicubic(LR) and each model's SR (all clamped to [0, 1]). Writes OUT/downstream.json and
OUT/downstream.md (a Markdown table, also printed): RMSE per input, and per model the share of the
bicubic-to-HR RMSE gap it closes, with paired-bootstrap 95% intervals. The regressor's default 1000 steps
of 32 150 px images take ~5 minutes on a free CPU thread (0.28 s/step), 9 on a busy 2-core machine.

    python tools/downstream_check.py DATA --model NAME=RUN_OR_PRETRAINED [--model ...] [--steps 1000]
        [--batch 32] [--seed 0] [--limit N] [--train-limit N] [--boot 1000] [--device cpu] [--out DIR]

``--limit`` / ``--train-limit``: the first N images of the test / train split (0: all). A set without
recorded parameters (packed from DeepLense .npy files) is an error: there is no truth to score against.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hpc_sr
from hpc_sr.atomic import atomic_write_text
from hpc_sr.data.dataset import InMemoryShardDataset
from hpc_sr.data.shards import load_manifest, read_split_params
from hpc_sr.errors import HpcSrError
from hpc_sr.eval.downstream import (
    ELLIPTICITY,
    TARGETS,
    bootstrap_gap_closed,
    bootstrap_rmse_difference,
    downstream_targets,
    gap_closed,
    predict,
    score,
    squared_errors,
    train_regressor,
)
from hpc_sr.eval.metrics import bicubic_upscale

HR, BICUBIC = "HR", "bicubic"
SHOWN = ("theta_E", ELLIPTICITY)  # the table's targets; the JSON has e1 and e2 as well


def parse_models(specs: list[str]) -> dict[str, str]:
    """``NAME=SOURCE`` (or a bare SOURCE, named by itself) -> {name: source}; names are unique and not HR or
    bicubic."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        name, source = (name, source) if sep else (spec, spec)
        if not name or not source:
            raise HpcSrError(f"--model {spec!r}: expected NAME=RUN_OR_PRETRAINED")
        if name in out or name in (HR, BICUBIC):
            raise HpcSrError(
                f"--model {spec!r}: the name {name!r} is taken (HR, bicubic or an earlier --model)"
            )
        out[name] = source
    return out


def split_data(root: str, split: str, limit: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(lr, hr, targets) of the first ``limit`` (0: all) images of ``split``; targets from the recorded
    parameters (a DataError naming the set when it has none)."""
    params = read_split_params(root, split)
    if params is None:
        raise HpcSrError(
            f"{root}: the shards carry no simulator parameters (a set packed from files?); the downstream "
            "check needs a simulated set (hpc-sr simulate)"
        )
    names = load_manifest(root).param_names
    lr, hr = InMemoryShardDataset(root, split, verify=False).arrays()
    n = limit or len(hr)
    return lr[:n], hr[:n], downstream_targets(params[:n], names)


def _fmt_share(share: float | None, ci: tuple[float, float]) -> str:
    if share is None:
        return "undefined (no gap)"
    lo, hi = ci
    return f"{share:+.2f} [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else f"{share:+.2f}"


def markdown(result: dict[str, Any]) -> str:
    """The Markdown table (plus the bicubic - HR line) of a ``run`` result."""
    rows = [
        "| input | theta_E RMSE (arcsec) | ellipticity RMSE | gap closed: theta_E "
        "| gap closed: ellipticity |",
        "|---|---|---|---|---|",
    ]
    for name, sc in result["scores"].items():
        cells = [name, f"{sc['theta_E']['rmse']:.5f}", f"{sc[ELLIPTICITY]['rmse']:.5f}"]
        gaps = result["gap_closed"].get(name)
        for key in SHOWN:
            if gaps is None:
                cells.append("1 (by definition)" if name == HR else "0 (by definition)")
            else:
                flag = "" if result["bicubic_minus_hr"][key]["significant"] else " (gap n/s)"
                cells.append(_fmt_share(gaps[key]["share"], tuple(gaps[key]["ci95"])) + flag)
        rows.append("| " + " | ".join(cells) + " |")
    diffs = "; ".join(
        f"{key}: {g['rmse_diff']:+.2e} [{g['ci95'][0]:+.2e}, {g['ci95'][1]:+.2e}]"
        + ("" if g["significant"] else " (not significant)")
        for key, g in ((k, result["bicubic_minus_hr"][k]) for k in SHOWN)
    )
    n, tr = result["n_test"], result["n_train"]
    notes = [
        "",
        f"bicubic - HR RMSE (95% paired bootstrap): {diffs}",
        "",
        f"Regressor trained on {tr} HR train images ({result['steps']} steps, seed {result['seed']}), "
        f"scored on {n} test images. Ellipticity RMSE = sqrt(mean(de1^2 + de2^2)). "
        "Gap closed = (RMSE_bicubic - RMSE_model) / (RMSE_bicubic - RMSE_HR), with 95% paired-bootstrap "
        "intervals; a share is only meaningful where bicubic - HR is significant.",
    ]
    return "\n".join(rows + notes) + "\n"


def run(
    data: str,
    models: dict[str, str],
    steps: int = 1000,
    batch: int = 32,
    seed: int = 0,
    limit: int = 0,
    train_limit: int = 0,
    n_boot: int = 1000,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Train the regressor, score every input; the result written to downstream.json."""
    t0 = time.monotonic()
    _, hr_train, y_train = split_data(data, "train", train_limit)
    reg, mean, std = train_regressor(
        torch.from_numpy(hr_train),
        y_train,
        steps=steps,
        batch=batch,
        seed=seed,
        device=device,
        progress=progress,
    )
    del hr_train
    t_train = time.monotonic() - t0
    lr, hr, truth = split_data(data, "test", limit)
    scale = load_manifest(data).scale
    lr_t = torch.from_numpy(lr)
    inputs: dict[str, torch.Tensor] = {
        HR: torch.from_numpy(hr),
        BICUBIC: bicubic_upscale(lr_t, scale).clamp(0, 1),
    }
    for name, source in models.items():
        gen = hpc_sr.load_generator(source, device=device)
        if int(gen.scale) != scale:
            raise HpcSrError(f"--model {name}={source}: scale {gen.scale}, the set {data} has scale {scale}")
        inputs[name] = hpc_sr.upscale(gen, lr_t, batch_size=16, device=device, clamp=True).cpu()
    preds = {name: predict(reg, x, mean, std, device=device) for name, x in inputs.items()}
    sq = {name: squared_errors(p, truth) for name, p in preds.items()}
    scores = {name: score(p, truth) for name, p in preds.items()}
    keys = [*TARGETS, ELLIPTICITY]
    diff_ci = bootstrap_rmse_difference(sq[BICUBIC], sq[HR], n_boot=n_boot, seed=seed)
    bic_hr = {}
    for key in keys:
        lo, hi = diff_ci[key]
        d = scores[BICUBIC][key]["rmse"] - scores[HR][key]["rmse"]
        bic_hr[key] = {"rmse_diff": d, "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)}
    gaps: dict[str, dict[str, Any]] = {}
    for name in models:
        ci = bootstrap_gap_closed(sq[BICUBIC], sq[name], sq[HR], n_boot=n_boot, seed=seed)
        gaps[name] = {}
        for key in keys:
            try:
                share: float | None = gap_closed(
                    scores[BICUBIC][key]["rmse"], scores[name][key]["rmse"], scores[HR][key]["rmse"]
                )
            except ValueError:
                share = None
            gaps[name][key] = {"share": share, "ci95": list(ci[key])}
    return {
        "data": str(data),
        "targets": list(TARGETS),
        "units": {"theta_E": "arcsec", "lens_e1": "", "lens_e2": "", ELLIPTICITY: ""},
        "n_train": int(len(y_train)),
        "n_test": int(len(truth)),
        "steps": steps,
        "batch": batch,
        "seed": seed,
        "models": models,
        "target_mean": [float(v) for v in mean],
        "target_std": [float(v) for v in std],
        "scores": scores,
        "bicubic_minus_hr": bic_hr,
        "gap_closed": gaps,
        "seconds": {"train": t_train, "total": time.monotonic() - t0},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a simulated shard directory (with recorded parameters)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE",
                    help="a run directory, checkpoint, G.pt or pretrained name; repeatable")  # fmt: skip
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--train-limit", type=int, default=0, help="first N train images (0: all)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="downstream", help="output directory (default: ./downstream)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = run(
            a.data,
            parse_models(a.model),
            steps=a.steps,
            batch=a.batch,
            seed=a.seed,
            limit=a.limit,
            train_limit=a.train_limit,
            n_boot=a.boot,
            device=a.device,
            progress=not a.no_progress,
        )
    except HpcSrError as exc:
        print(f"downstream_check: error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    table = markdown(result)
    atomic_write_text(out / "downstream.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "downstream.md", table)
    print(table, end="")
    print(f"wrote {out / 'downstream.json'} and {out / 'downstream.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
