"""Ground-to-space super-resolution on the ``ground_space`` preset: classical deconvolution, scratch training
on N pairs, simulation pre-training and few-pair fine-tuning with k-fold cross-validation (docs/RESULTS.md,
"Two instruments: ground to space").

    python -m hpc_sr.studies instruments --out WORK [--steps 1000] [--folds 5] [--limit 200]
        [--parts baselines,scratch,pretrain,folds,zoo,downstream] [--scratch 100,1000,6000]

Data (made once, ``hpc-sr simulate``): WORK/gs, ``--num`` pairs of ``ground_space`` at ``--hr-size``
(80/10/10: train 6,000 of 7,500 by default; the common test split of every row), and WORK/few, ``--few``
pairs of a different seed split 80/20 (the "few hundred pairs" a user has; k folds pool all of them: 300
train / 75 val per fold by default).

Rows, every model with the same recipe (``overrides``: RRDB 32x1, LR patches of 24, batch 16, MSE, cosine) and
step budget ``--steps``, scored on the first ``--limit`` test images of WORK/gs against HR and the noise-free
HR, and their LR residual through the LR instrument model:

* ``baselines``: bicubic, Wiener and Richardson-Lucy deconvolution told each image's PSFs and shift;
* ``scratch``: from random weights on the first N train pairs (``data.train_pairs``), N in ``--scratch``;
* ``pretrain``: on the endless simulated stream (``data.source: simulate``), no pair reused;
* ``folds``: on WORK/few, fold k of ``--folds``: from scratch and fine-tuned from ``pretrain``
  (``train.init_g``, half the learning rate, early stopping on val PSNR); mean and std over folds;
* ``zoo``: the zoo's other archs (hpc_sr.studies.zoo sizes) on all the train pairs, same recipe and budget;
* ``downstream``: the Einstein-radius / ellipticity regressor (hpc_sr.studies.downstream) on WORK/gs with the
  pretrained, the best fine-tuned fold and the 6,000-pair model.

Runs are resumable: a finished run is scored again, not retrained. Writes WORK/instruments.json and
WORK/instruments.md (also printed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_sr.apps.runs import read_run
from hpc_sr.atomic import atomic_write_text
from hpc_sr.config import load_config
from hpc_sr.data.lensing import hr_kernels, lr_kernels
from hpc_sr.data.presets import resolve_preset
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.data.truth import simulation_truth
from hpc_sr.eval.deconvolution import estimate_noise_var, richardson_lucy, richardson_lucy_path, wiener
from hpc_sr.eval.metrics import MetricAccumulator, bicubic_upscale
from hpc_sr.eval.physics import per_image_physics
from hpc_sr.studies.ceiling import read_split
from hpc_sr.studies.common import add_limit, add_out, load_model, study_parser, upscale, write_json
from hpc_sr.studies.zoo import ZOO
from hpc_sr.train.checkpoint import best_checkpoint
from hpc_sr.train.entry import run_training

__all__ = ["PARTS", "PRESET", "RECIPE", "main", "markdown", "overrides", "score", "scored_baselines"]

PRESET = "ground_space"
PARTS = ("baselines", "scratch", "pretrain", "folds", "zoo", "downstream")
RECIPE: dict[str, Any] = {"arch": "rrdb", "options": {"channels": 32, "blocks": 1, "growth": 16}}


def overrides(runs: Path, name: str, steps: int, *extra: str, lr: float = 4e-4) -> list[str]:
    """The recipe every learned row shares: run ``runs/name``, ``steps`` steps, then ``extra`` overrides."""
    every = max(steps // 10, 1)
    return [
        "data.batch_size=16", "data.patch_size=24", "data.val_images=64",
        f"model.g.arch={RECIPE['arch']}", f"model.g.options={json.dumps(RECIPE['options'])}",
        f"train.steps={steps}", f"train.pretrain_steps={steps}", f"train.lr_g={lr}", "train.warmup_steps=50",
        "train.ema_decay=0.995", "train.losses=[{term: pixel, kind: mse, weight: 1.0}]",
        f"train.val_every={every}", f"train.ckpt_every={every}", "train.keep_last=1",
        f"log.runs_dir={runs}", f"log.name={name}", f"log.log_every={every}", f"log.image_every={steps}",
        *extra,
    ]  # fmt: skip


def train_once(cfg: list[str], run: Path, steps: int) -> Path:
    """Train unless finished (all ``steps`` or stopped early); the checkpoint to score: the best validated
    one if kept, else the latest."""
    history = read_run(run) if (run / "checkpoints" / "latest").is_file() else None
    done = history is not None and (history.train.get(steps) is not None or history.early_stop is not None)
    if not done:
        run_training(load_config(None, cfg), resume="auto")
    steps_dirs = sorted((run / "checkpoints").glob("step_*"))
    return best_checkpoint(steps_dirs) or run


# ----------------------------------------------------------------------------------------------- scoring
def score(sr: torch.Tensor, t: dict[str, Any]) -> dict:
    """Of SR clamped to [0, 1] on the test images ``t``: mean per-image PSNR (and pooled) and SSIM vs HR and
    vs the noise-free HR, the LR residual through the LR instrument model, the flux error, the arc-region
    PSNR and the error of the ring radius against the noise-free image's (pixels; hpc_sr.eval.physics)."""
    sr = sr.float().clamp(0, 1)
    vs_hr, vs_clean = MetricAccumulator(), MetricAccumulator()
    vs_hr.update(sr, t["hr"].float())
    vs_clean.update(sr, t["truth"].clean.float())
    a, c = vs_hr.compute(), vs_clean.compute()
    phys = per_image_physics(sr, t["hr"], t["lr"], t["scale"], **t["truth"].as_kwargs())
    arc = phys["arc_psnr"][torch.isfinite(phys["arc_psnr"])]
    return {
        "n": a["n"], "psnr": a["psnr"], "psnr_pooled": a["psnr_pooled"], "ssim": a["ssim"],
        "psnr_clean": c["psnr"], "ssim_clean": c["ssim"], "lr_residual": float(phys["lr_residual"].mean()),
        "flux_err": a["flux_err"], "arc_psnr": float(arc.mean()) if len(arc) else math.nan,
        "ring_err_px": float((phys["ring_sr"] - phys["ring_clean"]).abs().mean()),
    }  # fmt: skip


def split_images(data: Path, split: str, limit: int) -> dict[str, Any]:
    """LR, HR, params, the simulator's truth (noise-free HR, LR model, ...) and the PSFs of the first
    ``limit`` images of ``split``."""
    lr, hr, params, scale = read_split(str(data), split, limit)
    p = params.double()
    ps = resolve_preset(PRESET).pixel_scale
    return {
        "lr": lr, "hr": hr, "params": p, "scale": scale,
        "truth": simulation_truth(p, PRESET, hr.shape[-1], scale=scale),
        "psf_lr": lr_kernels(p, ps, scale), "psf_hr": hr_kernels(p, ps),
    }  # fmt: skip


RL_ITERATIONS = (
    5,
    10,
    15,
    20,
    30,
    45,
    70,
    100,
)  # Richardson-Lucy's stopping point, chosen on validation pairs
WIENER_K = (3.5, 7.0, 14.0, 28.0, 56.0)  # Wiener's k / the image's LR noise variance, chosen likewise


def _batched(fn: Any, t: dict[str, Any], n: int = 16) -> Any:
    """fn(lr, psf_lr, psf_hr, noise_var) over the images of ``t`` in batches of n, outputs concatenated (a
    list of outputs: each one)."""
    outs = []
    for i in range(0, len(t["lr"]), n):
        lr = t["lr"][i : i + n]
        outs.append(fn(lr, t["psf_lr"][i : i + n], t["psf_hr"][i : i + n], estimate_noise_var(lr)))
    if isinstance(outs[0], list):
        return [torch.cat([o[j] for o in outs]) for j in range(len(outs[0]))]
    return torch.cat(outs)


def tune_baselines(val: dict[str, Any]) -> dict[str, float]:
    """The RL iteration count and the Wiener k factor with the best mean PSNR on validation pairs ``val``."""
    sc = val["scale"]

    def psnr(sr: torch.Tensor) -> float:
        acc = MetricAccumulator()
        acc.update(sr.float().clamp(0, 1), val["hr"].float())
        return acc.compute()["psnr"]

    path = _batched(
        lambda lr, pl, ph, v: richardson_lucy_path(lr, pl, ph, RL_ITERATIONS, sc, noise_var=v), val
    )
    rl = {it: psnr(sr) for it, sr in zip(RL_ITERATIONS, path, strict=True)}
    wn = {k: psnr(_batched(lambda lr, pl, ph, v, k=k: wiener(lr, pl, ph, sc, k=k * v, noise_var=v), val))
          for k in WIENER_K}  # fmt: skip
    return {"rl_iterations": max(rl, key=rl.__getitem__), "wiener_k": max(wn, key=wn.__getitem__),
            "rl_val_psnr": rl, "wiener_val_psnr": wn}  # fmt: skip


def scored_baselines(t: dict[str, Any], val: dict[str, Any]) -> dict[str, dict]:
    """Bicubic, Wiener and Richardson-Lucy (told each image's PSFs and shift, their one setting chosen on the
    validation pairs ``val``), the noise-free HR and HR itself, scored on ``t``."""
    tuned = tune_baselines(val)
    out: dict[str, dict] = {"bicubic": score(bicubic_upscale(t["lr"], t["scale"]), t)}
    sc, its, k = t["scale"], int(tuned["rl_iterations"]), float(tuned["wiener_k"])
    for name, fn, setting in (
        ("wiener", lambda lr, pl, ph, v: wiener(lr, pl, ph, sc, k=k * v, noise_var=v),
         {"k_per_noise_var": k}),
        ("richardson_lucy", lambda lr, pl, ph, v: richardson_lucy(lr, pl, ph, sc, its, noise_var=v),
         {"iterations": its}),
    ):  # fmt: skip
        t0 = time.monotonic()
        sr = _batched(fn, t)
        out[name] = {**score(sr, t), **setting, "s_per_image": (time.monotonic() - t0) / len(t["lr"])}
    out["noise-free HR"] = score(t["truth"].clean, t)
    out["HR"] = score(t["hr"], t)
    return out


def scored_model(source: Path | str, t: dict[str, Any]) -> dict:
    sr = upscale(load_model(str(source)), t["lr"], clamp=True)
    return score(sr, t)


# ----------------------------------------------------------------------------------------------- report
def _row(name: str, r: dict, gain_ref: float | None = None) -> str:
    gain = "" if gain_ref is None else f"{r['psnr'] - gain_ref:+.2f} dB"
    arc, ring = r.get("arc_psnr", math.nan), r.get("ring_err_px", math.nan)
    return (f"| {name} | {r['psnr']:.2f} / {r['psnr_pooled']:.2f} | {r['ssim']:.3f} | "
            f"{r['psnr_clean']:.2f} | {r['ssim_clean']:.3f} | {r['lr_residual']:.4f} | "
            f"{arc:.2f} | {ring:.2f} | {gain} |")  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The results table: one row per baseline and model, folds as mean +- std, then the verdicts."""
    rows = result["rows"]
    ref = rows.get("bicubic", {}).get("psnr")
    lines = [
        f"Test: first {result['limit']} test images of {result['data']['gs']} ({PRESET}, "
        f"hr {result['hr_size']}); every learned row: {RECIPE['arch']} {RECIPE['options']}, "
        f"{result['steps']} steps of 16 LR patches of 24.",
        "",
        "| input | PSNR mean / pooled (dB) | SSIM | PSNR vs noise-free HR | SSIM vs noise-free | "
        "LR residual via LR model | arc PSNR | ring radius err vs noise-free (px) | gain vs bicubic |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "folds" in r:
            gain = "" if ref is None else f"{r['psnr'] - ref:+.2f} dB"
            lines.append(
                f"| {name} ({len(r['folds'])} folds) | {r['psnr']:.2f} +- {r['psnr_std']:.2f} | "
                f"{r['ssim']:.3f} +- {r['ssim_std']:.3f} | {r['psnr_clean']:.2f} | {r['ssim_clean']:.3f} | "
                f"{r['lr_residual']:.4f} | {r.get('arc_psnr', math.nan):.2f} | "
                f"{r.get('ring_err_px', math.nan):.2f} | {gain} |"
            )
        else:
            lines.append(_row(name, r, ref))
    for line in result.get("verdicts", []):
        lines.append(f"\n{line}")
    if "downstream" in result:
        from hpc_sr.studies.downstream import markdown as downstream_markdown

        lines += ["", "Downstream (Einstein radius and ellipticity regressor trained on HR):", "",
                  downstream_markdown(result["downstream"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def _fold_summary(scores: list[dict]) -> dict[str, Any]:
    keys = (
        "psnr",
        "psnr_pooled",
        "ssim",
        "psnr_clean",
        "ssim_clean",
        "lr_residual",
        "flux_err",
        "arc_psnr",
        "ring_err_px",
    )
    out: dict[str, Any] = {k: float(np.mean([s[k] for s in scores])) for k in keys}
    out.update(psnr_std=float(np.std([s["psnr"] for s in scores], ddof=1)) if len(scores) > 1 else math.nan,
               ssim_std=float(np.std([s["ssim"] for s in scores], ddof=1)) if len(scores) > 1 else math.nan,
               folds=scores)  # fmt: skip
    return out


def verdicts(
    rows: dict[str, dict], folds: int, few_train: int, downstream: dict[str, Any] | None = None
) -> list[str]:
    """The issue's targets, stated from the rows present."""
    out = []
    bic = rows.get("bicubic")
    ft, sc = rows.get(f"fine-tuned on {few_train}"), rows.get(f"scratch on {few_train}")
    big = rows.get("scratch on 6000")
    if ft and sc:
        margin = ft["psnr"] - sc["psnr"]
        std = max(ft["psnr_std"], sc["psnr_std"])
        out.append(
            f"Fine-tuned vs scratch on the few pairs ({folds} folds): {margin:+.2f} dB, fold std {std:.2f} "
            f"dB: {'beats' if margin > 2 * std else 'does NOT beat'} it by more than twice the std."
        )
    if ft and big and bic:
        share = (ft["psnr"] - bic["psnr"]) / (big["psnr"] - bic["psnr"])
        out.append(
            f"Fine-tuned reaches {share:.0%} of the 6,000-pair model's gain over bicubic (target >= 90 %)."
        )
    if downstream:
        for name, gaps in downstream["gap_closed"].items():
            share = gaps["theta_E"]["share"]
            lo, hi = gaps["theta_E"]["ci95"]
            if share is not None:
                out.append(f"Downstream theta_E: {name} closes {share:.0%} (95 % CI {lo:.0%} to {hi:.0%}) of "
                           "the bicubic-to-HR error gap (target >= 50 %).")  # fmt: skip
    learned = [k for k in rows if k not in ("bicubic", "wiener", "richardson_lucy", "noise-free HR", "HR")]
    for base in ("richardson_lucy", "wiener"):
        if base in rows and learned:
            b = rows[base]
            losers = [k for k in learned if rows[k]["psnr"] <= b["psnr"] or rows[k]["ssim"] <= b["ssim"]]
            out.append(
                f"vs {base} ({b['psnr']:.2f} dB / {b['ssim']:.3f}): "
                + (
                    "every learned row beats it in PSNR and SSIM."
                    if not losers
                    else f"NOT beaten in PSNR and SSIM by: {', '.join(losers)}."
                )
            )
    return out


# ----------------------------------------------------------------------------------------------- parts
def run_part(
    part: str, a: Any, t: dict[str, Any], gs: Path, few: Path, runs: Path, few_train: int
) -> tuple[dict[str, dict], dict[str, str]]:
    """Train (unless done) and score one part's rows: ({row: scores}, {row: checkpoint scored})."""
    rows: dict[str, dict] = {}
    runs_of: dict[str, str] = {}
    memory = ["data.options.loader=memory", "data.options.num_workers=0"]
    pre_steps = a.pretrain_steps or a.steps
    pre = runs / "sim_pretrain"
    if part == "baselines":
        rows.update(scored_baselines(t, split_images(gs, "val", min(a.limit, 48))))
    elif part == "scratch":
        for n in [int(x) for x in a.scratch.split(",") if x]:
            name = f"scratch_{n}"
            cfg = overrides(runs, name, a.steps, f"data.path={gs}", f"data.train_pairs={n}", *memory)
            src = train_once(cfg, runs / name, a.steps)
            rows[f"scratch on {n}"], runs_of[f"scratch on {n}"] = scored_model(src, t), str(src)
    elif part == "pretrain":
        cfg = overrides(runs, "sim_pretrain", pre_steps, "data.source=simulate",
                        f"data.options.preset={PRESET}", f"data.options.hr_size={a.hr_size}")  # fmt: skip
        src = train_once(cfg, pre, pre_steps)
        rows["pre-trained on simulation only"] = scored_model(src, t)
        runs_of["pre-trained on simulation only"] = str(src)
    elif part == "folds":
        if not (pre / "checkpoints" / "latest").is_file():
            raise SystemExit("--parts folds needs the pretrain run first (add pretrain to --parts)")
        scratch, tuned = f"scratch on {few_train}", f"fine-tuned on {few_train}"
        per: dict[str, list[dict]] = {scratch: [], tuned: []}
        for k in range(a.folds):
            fold = [f"data.path={few}", f"data.folds={a.folds}", f"data.fold={k}", *memory,
                    "train.early_stop_patience=3"]  # fmt: skip
            name = f"few_scratch_f{k}"
            src = train_once(overrides(runs, name, a.steps, *fold), runs / name, a.steps)
            per[scratch].append(scored_model(src, t))
            name = f"few_finetune_f{k}"
            cfg = overrides(
                runs, name, a.steps, *fold, f"train.init_g={pre}", "train.warmup_steps=0", lr=2e-4
            )
            src = train_once(cfg, runs / name, a.steps)
            per[tuned].append(scored_model(src, t))
            runs_of[f"{tuned} fold {k}"] = str(src)
        rows.update({name: _fold_summary(s) for name, s in per.items()})
    elif part == "zoo":  # the zoo's other archs, same data (all train pairs), steps and recipe
        for arch in [x for x in a.zoo.split(",") if x and x != RECIPE["arch"]]:
            options = ZOO[arch]
            name = f"zoo_{arch}"
            cfg = overrides(runs, name, a.steps, f"data.path={gs}", *memory, f"model.g.arch={arch}",
                            f"model.g.options={json.dumps(options)}")  # fmt: skip
            src = train_once(cfg, runs / name, a.steps)
            rows[f"{arch} on 6000 (zoo)"], runs_of[f"{arch} on 6000 (zoo)"] = scored_model(src, t), str(src)
    elif part == "downstream":
        from hpc_sr.studies.downstream import run as downstream_run

        done: dict[str, str] = {}
        for other in ("scratch", "pretrain", "folds"):
            f = a.out / "parts" / f"{other}.json"
            if f.is_file():
                done.update(json.loads(f.read_text())["runs"])
        wanted = ("pre-trained on simulation only", f"fine-tuned on {few_train} fold 0", "scratch on 6000")
        models = {k: v for k, v in done.items() if k in wanted}
        result = downstream_run(str(gs), models, steps=a.downstream_steps, limit=a.limit)
        write_json(a.out / "downstream.json", result)
        rows, runs_of = {}, {}
    return rows, runs_of


# ----------------------------------------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = study_parser("instruments", __doc__ or "", prog)
    add_out(ap, None, "work directory: gs/, few/, runs/, instruments.json, instruments.md")
    ap.add_argument("--num", type=int, default=7500, help="pairs of the main set (80 %% train)")
    ap.add_argument("--few", type=int, default=375, help="pairs of the few-pair set (pooled by the folds)")
    ap.add_argument("--hr-size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=1000, help="training steps of every learned row")
    ap.add_argument(
        "--pretrain-steps", type=int, default=0, help="steps of the simulation pre-training (0: --steps)"
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument(
        "--scratch",
        default="100,1000,6000",
        help="N of the scratch rows (train pairs of WORK/gs; the few-pair scratch row is the folds')",
    )
    ap.add_argument("--parts", default=",".join(PARTS), help=f"any of {', '.join(PARTS)}")
    ap.add_argument("--downstream-steps", type=int, default=600)
    ap.add_argument("--zoo", default=",".join(a for a in ZOO if a != RECIPE["arch"]),
                    help="archs of the zoo part")  # fmt: skip
    add_limit(ap, 200, "test images scored")
    a = ap.parse_args(argv)
    parts = [p for p in a.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"--parts {a.parts!r}: unknown {unknown}; valid: {', '.join(PARTS)}")
    bad = [x for x in a.zoo.split(",") if x and x not in ZOO]
    if bad:
        ap.error(f"--zoo {a.zoo!r}: unknown archs {bad}; valid: {', '.join(ZOO)}")
    torch.set_num_threads(1)
    gs, few, runs = a.out / "gs", a.out / "few", a.out / "runs"
    if not (gs / "manifest.json").is_file():
        simulate_to_shards(gs, num=a.num, preset=PRESET, seed=1, shard_size=2048, hr_size=a.hr_size)
    if not (few / "manifest.json").is_file():
        simulate_to_shards(few, num=a.few, preset=PRESET, seed=2, shard_size=2048, hr_size=a.hr_size,
                           split=(0.8, 0.2, 0.0))  # fmt: skip
    t = split_images(gs, "test", a.limit)
    few_train = a.few - a.few // a.folds  # training pairs per fold: the pool less one fold (75 of 375)
    (a.out / "parts").mkdir(parents=True, exist_ok=True)
    for part in parts:  # each part's rows in a file of its own: parts may run as concurrent processes
        rows, runs_of = run_part(part, a, t, gs, few, runs, few_train)
        write_json(a.out / "parts" / f"{part}.json", {"rows": rows, "runs": runs_of})
    result: dict[str, Any] = {
        "data": {"gs": str(gs), "few": str(few)}, "limit": len(t["lr"]), "hr_size": a.hr_size,
        "steps": a.steps, "pretrain_steps": a.pretrain_steps or a.steps, "recipe": RECIPE, "rows": {},
        "runs": {},
    }  # fmt: skip
    for part in PARTS:  # whatever parts have run, in table order
        f = a.out / "parts" / f"{part}.json"
        if f.is_file():
            done = json.loads(f.read_text())
            result["rows"].update(done["rows"])
            result["runs"].update(done["runs"])
    if (a.out / "downstream.json").is_file():
        result["downstream"] = json.loads((a.out / "downstream.json").read_text())
    result["verdicts"] = verdicts(result["rows"], a.folds, few_train, result.get("downstream"))
    write_json(a.out / "instruments.json", result)
    text = markdown(result)
    atomic_write_text(a.out / "instruments.md", text)
    print(text)
    return 0
