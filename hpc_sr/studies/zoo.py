"""Every zoo generator trained on the same CPU budget on one simulated deeplense_sr set, then evaluated on its
test split beside bicubic and the split's noise ceiling (the table in docs/RESULTS.md, "Model zoo at equal
budget").

    python -m hpc_sr.studies zoo --out WORK [--num 6000] [--steps 1200] [--only srresnet,rcan] [--limit 600]

Same data, steps, LR patch (24), batch (16), MSE pixel loss, schedule and EMA for every arch; sizes chosen so
that each trains at a similar images/s on one CPU thread (measured and reported). The best arch is trained
once more with the exact LR-consistency layer (``model.g.lr_consistent``). Writes WORK/zoo.json and
WORK/zoo.md; runs are resumable (a finished run is evaluated again, not retrained).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hpc_sr.apps.evaluate import evaluate
from hpc_sr.apps.runs import read_run
from hpc_sr.atomic import atomic_write_text
from hpc_sr.config import load_config
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.models.complexity import count_parameters
from hpc_sr.studies.ceiling import ceiling
from hpc_sr.studies.common import add_limit, add_out, study_parser, write_json
from hpc_sr.train.components import build_generator
from hpc_sr.train.entry import run_training

__all__ = ["ZOO", "main", "markdown", "overrides", "train_once"]

ZOO: dict[str, dict[str, object]] = {
    "srresnet": {"channels": 32, "blocks": 4, "res_scale": 0.1},
    "edsr": {"channels": 40, "blocks": 4, "res_scale": 0.1},
    "rcan": {"channels": 32, "groups": 2, "blocks": 2, "reduction": 8, "res_scale": 0.1},
    "rrdb": {"channels": 32, "blocks": 1, "growth": 16},
    "swinir": {"embed_dim": 32, "depths": [2, 2], "num_heads": [2, 2], "window_size": 8},
}


def overrides(
    arch: str, options: dict[str, object], data: Path, runs: Path, name: str, steps: int, lr_consistent: bool
) -> list[str]:
    """The config overrides of the zoo recipe for ``arch`` on ``data``: run ``runs/name``, ``steps`` steps."""
    return [
        f"data.path={data}", "data.options.loader=memory", "data.batch_size=16", "data.patch_size=24",
        "data.options.num_workers=0",
        "data.val_images=64", f"model.g.arch={arch}", f"model.g.options={json.dumps(options)}",
        f"model.g.lr_consistent={str(lr_consistent).lower()}", f"train.steps={steps}",
        f"train.pretrain_steps={steps}", "train.lr_g=4e-4", "train.warmup_steps=50", "train.ema_decay=0.995",
        "train.losses=[{term: pixel, kind: mse, weight: 1.0}]", f"train.val_every={steps // 2}",
        f"train.ckpt_every={steps // 2}", "train.keep_last=1", f"log.runs_dir={runs}", f"log.name={name}",
        "log.log_every=100", f"log.image_every={steps}",
    ]  # fmt: skip


def train_once(cfg_overrides: list[str], run: Path, steps: int) -> None:
    """Train the run unless it has finished ``steps`` steps (an unfinished one resumes)."""
    finished = (run / "checkpoints" / "latest").is_file() and read_run(run).train.get(steps) is not None
    if not finished:
        run_training(load_config(None, cfg_overrides), resume="auto")


def markdown(rows: list[dict[str, Any]], ceil: dict[str, Any]) -> str:
    """The zoo table: one row per run, then bicubic and the noise ceiling."""
    lines = [
        "| arch | LR-consistent | params | train img/s | PSNR mean / pooled | SSIM | flux err | gain "
        "| of ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {'yes' if r['lr_consistent'] else 'no'} | {r['params']:,} | "
            f"{r['train_img_s']:.0f} | {r['psnr']:.3f} / {r['psnr_pooled']:.3f} | {r['ssim']:.4f} | "
            f"{r['flux_err']:.2e} | {r['gain_db']:+.3f} dB | {r['ceiling_fraction']:.0%} |"
        )
    b = rows[0] if rows else None
    if b:
        lines.append(
            f"| bicubic | | | | {b['bicubic_psnr']:.3f} | {b['bicubic_ssim']:.4f} | "
            f"{b['bicubic_flux_err']:.2e} | | |"
        )
        lines.append(
            f"| noise ceiling | | | | {ceil['ceiling']['psnr']:.3f} | {ceil['ceiling']['ssim']:.4f} | | "
            f"{b['ceiling_gain_db']:+.3f} dB | 100% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = study_parser("zoo", __doc__ or "", prog)
    add_out(ap, None, "work directory: data/, runs/, zoo.json, zoo.md")
    ap.add_argument("--num", type=int, default=6000, help="pairs simulated")
    ap.add_argument("--steps", type=int, default=1200, help="training steps per arch")
    add_limit(ap, 600, "test images evaluated")
    ap.add_argument("--only", default="", help="comma-separated archs (default: all)")
    a = ap.parse_args(argv)
    unknown = [x for x in a.only.split(",") if x and x not in ZOO]
    if unknown:
        ap.error(f"--only {a.only!r}: unknown archs {unknown}; valid: {', '.join(ZOO)}")
    torch.set_num_threads(1)
    data, runs = a.out / "data", a.out / "runs"
    if not (data / "manifest.json").is_file():
        simulate_to_shards(data, num=a.num, preset="deeplense_sr", seed=0, shard_size=2048)
    ceil = {"split": "test", **ceiling(str(data), "test", a.limit)}
    archs = [x for x in a.only.split(",") if x] or list(ZOO)
    plan = [(arch, False) for arch in archs]
    rows: list[dict[str, Any]] = []
    for arch, lrc in plan + [("best", True)]:
        if arch == "best":
            if not rows:
                break
            arch = max(rows, key=lambda r: r["gain_db"])["arch"]
        name = f"{arch}{'_lrc' if lrc else ''}"
        cfg = overrides(arch, ZOO[arch], data, runs, name, a.steps, lrc)
        t0 = time.time()
        train_once(cfg, runs / name, a.steps)
        history = read_run(runs / name)
        ips = [
            r.get("images_per_s")
            for s, r in sorted(history.train.items())
            if s > 100 and r.get("images_per_s")
        ]
        res = evaluate(runs / name, data, split="test", limit=a.limit, quiet=True)
        m, b = res["model"], res["bicubic"]
        gain, ceiling_gain = m["psnr"] - b["psnr"], ceil["ceiling"]["psnr"] - ceil["bicubic"]["psnr"]
        rows.append({
            "arch": arch, "lr_consistent": lrc, "options": ZOO[arch],
            "params": count_parameters(build_generator(load_config(None, cfg).model, 2)),
            "train_img_s": sorted(ips)[len(ips) // 2] if ips else float("nan"),
            "psnr": m["psnr"], "psnr_pooled": m["psnr_pooled"], "ssim": m["ssim"], "flux_err": m["flux_err"],
            "bicubic_psnr": b["psnr"], "bicubic_ssim": b["ssim"], "bicubic_flux_err": b["flux_err"],
            "gain_db": gain, "ceiling_gain_db": ceiling_gain, "ceiling_fraction": gain / ceiling_gain,
            "wall_s": time.time() - t0, "n": res["n"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        write_json(a.out / "zoo.json", {"ceiling": ceil, "rows": rows})
    table = markdown(rows, ceil)
    atomic_write_text(a.out / "zoo.md", table)
    print(table, end="")
    return 0
