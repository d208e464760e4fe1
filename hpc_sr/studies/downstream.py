"""A downstream science check: does SR help measure the lens? (docs/EVALUATION.md, "Downstream check").

A small CNN regressor is trained on the HR images of a simulated train split to predict the lens's Einstein
radius ``theta_E`` (arcsec) and its complex ellipticity ``(lens_e1, lens_e2)`` from the recorded simulator
parameters, then scored on the test split's HR, bicubic(LR) and each model's SR (all clamped to [0, 1]). The
share of the bicubic-to-HR error gap a model closes is ``gap_closed`` = (err_bicubic - err_model) /
(err_bicubic - err_HR): 1 = as good as HR, 0 = no better than bicubic, < 0 = worse than bicubic. Writes
OUT/downstream.json and OUT/downstream.md (a Markdown table, also printed): RMSE per input, and per model the
share of the gap it closes, with paired-bootstrap 95% intervals. The regressor's default 1000 steps of 32
150 px images take ~5 minutes on a free CPU thread (0.28 s/step), 9 on a busy 2-core machine.

    python -m hpc_sr.studies downstream DATA --model NAME=RUN_OR_PRETRAINED [--model ...] [--steps 1000]
        [--batch 32] [--seed 0] [--limit N] [--train-limit N] [--boot 1000] [--device cpu] [--out DIR]

``--limit`` / ``--train-limit``: the first N images of the test / train split (0: all). A set without
recorded parameters (packed from DeepLense .npy files) is an error: there is no truth to score against.

* targets: ``downstream_targets`` picks (theta_E, lens_e1, lens_e2) out of the recorded parameters; the
  regressor predicts them standardised by the train split's mean and std;
* ellipticity is scored as the components and as one figure, the rms modulus of the complex ellipticity error
  sqrt(mean(de1^2 + de2^2)) (``ELLIPTICITY``); e1, e2 rather than |e| because |e| has no sign to regress near
  0 and the orientation matters as much as the axis ratio;
* augmentation (``dihedral``): the 8 flips / rotations of the square grid. theta_E is invariant; (e1, e2) =
  |e| (cos 2 phi, sin 2 phi) with phi from the x axis (columns) toward y (rows), so a transpose (x <-> y,
  phi -> 90 deg - phi) negates e1 and a flip of rows or of columns (phi -> -phi or 180 deg - phi) negates e2.
  Pixel centres are symmetric about the image centre, and the PSF and noise are isotropic, so the augmented
  pair is exactly a pair the simulator could have drawn (tests/studies/test_downstream.py checks it by
  re-rendering with transformed parameters).

Everything is deterministic for a seed on one device (CPU, one thread, measured); inputs are clamped to
[0, 1] inside the model, as SR outputs are for the metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hpc_sr.atomic import atomic_write_text
from hpc_sr.data.dataset import InMemoryShardDataset
from hpc_sr.data.shards import load_manifest, read_split_params
from hpc_sr.errors import DataError, HpcSrError
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.studies.common import (
    add_data,
    add_device,
    add_limit,
    add_models,
    add_out,
    add_seed,
    fail,
    load_model,
    parse_models,
    study_parser,
    upscale,
    write_json,
)
from hpc_sr.train.schedule import lr_at

__all__ = [
    "ELLIPTICITY",
    "TARGETS",
    "Regressor",
    "bootstrap_gap_closed",
    "bootstrap_rmse_difference",
    "dihedral",
    "downstream_targets",
    "gap_closed",
    "main",
    "markdown",
    "predict",
    "run",
    "score",
    "squared_errors",
    "train_regressor",
]

TARGETS: tuple[str, ...] = ("theta_E", "lens_e1", "lens_e2")
ELLIPTICITY = "ellipticity"  # the combined figure: rms |e_pred - e_true| over (lens_e1, lens_e2)
_E1, _E2 = TARGETS.index("lens_e1"), TARGETS.index("lens_e2")
_GAP_EPS = 1e-12
HR, BICUBIC = "HR", "bicubic"
SHOWN = ("theta_E", ELLIPTICITY)  # the table's targets; the JSON has e1 and e2 as well


def downstream_targets(params: np.ndarray | Tensor, param_names: Sequence[str]) -> Tensor:
    """The regression targets (N, 3) float64 in ``TARGETS`` order (theta_E arcsec, lens_e1, lens_e2) out of
    recorded simulator parameters (N, P) whose columns are ``param_names`` (a manifest's)."""
    names = list(param_names)
    missing = [t for t in TARGETS if t not in names]
    if missing:
        raise DataError(f"parameters {names} lack {missing}: the downstream check needs {list(TARGETS)}")
    p = torch.as_tensor(np.asarray(params), dtype=torch.float64)
    if p.ndim != 2 or p.shape[1] != len(names):
        raise DataError(f"params have shape {tuple(p.shape)}; expected (N, {len(names)}) for {names}")
    return p[:, [names.index(t) for t in TARGETS]].clone()


# ----------------------------------------------------------------------------------------------- model
class Regressor(nn.Module):
    """Stride-2 conv blocks (3x3 conv, stride 2, ReLU) down to a few pixels, global mean + max pooling, a
    linear head: (N, 1, H, W) images -> (N, n_targets) standardised targets (~100k parameters by default)."""

    def __init__(self, n_targets: int = len(TARGETS), widths: Sequence[int] = (16, 32, 48, 64, 96)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, n_targets)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x.clamp(0.0, 1.0))
        return self.head(torch.cat([f.mean(dim=(-2, -1)), f.amax(dim=(-2, -1))], dim=1))


def dihedral(images: Tensor, targets: Tensor, code: Tensor) -> tuple[Tensor, Tensor]:
    """Each image and its (theta_E, e1, e2) target under one of the 8 symmetries of the square grid.

    ``code`` (N,) int in 0..7: bit 0 transposes (negates e1), bit 1 flips rows, bit 2 flips columns (each
    negates e2); the transpose comes first. Images must be square.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral: images must be square, got {tuple(images.shape[-2:])}")
    bit = [((code >> b) & 1).bool().to(images.device) for b in range(3)]
    m = [b.reshape(-1, 1, 1, 1) for b in bit]
    x = torch.where(m[0], images.transpose(-2, -1), images)
    x = torch.where(m[1], x.flip(-2), x)
    x = torch.where(m[2], x.flip(-1), x)
    sign = torch.ones_like(targets)
    tb = [b.to(targets.device) for b in bit]
    sign[:, _E1] = torch.where(tb[0], -1.0, 1.0)
    sign[:, _E2] = torch.where(tb[1] ^ tb[2], -1.0, 1.0)
    return x, targets * sign


def train_regressor(
    images: Tensor | np.ndarray,
    targets: Tensor,
    steps: int = 1000,
    batch: int = 32,
    seed: int = 0,
    lr: float = 2e-3,
    augment: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Regressor, Tensor, Tensor]:
    """(model in eval mode, target_mean (T,), target_std (T,)): a ``Regressor`` trained with AdamW (weight
    decay 1e-4; ``train.schedule.lr_at``: linear warm-up over 5% of the steps, then cosine decay to 0) on the
    MSE of standardised targets.

    ``images`` (N, 1, H, W) in [0, 1] (float32 kept on the CPU; batches go to ``device``); ``targets`` (N, T)
    in physical units. Batches of ``batch`` drawn with replacement from a generator seeded by ``seed`` (which
    also seeds the weights), each with a random ``dihedral`` transform when ``augment``. ``progress``: a tqdm
    bar on stderr.
    """
    x_all = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    y_all = torch.as_tensor(targets, dtype=torch.float64)
    if x_all.ndim != 4 or x_all.shape[1] != 1:
        raise ValueError(f"train_regressor: expected (N, 1, H, W) images, got shape {tuple(x_all.shape)}")
    if y_all.ndim != 2 or y_all.shape[0] != x_all.shape[0]:
        raise ValueError(
            f"train_regressor: targets {tuple(y_all.shape)} do not match {x_all.shape[0]} images"
        )
    if x_all.shape[0] < 2 or steps < 1 or batch < 1:
        raise ValueError(
            f"train_regressor: need >= 2 images, steps >= 1, batch >= 1 (got {x_all.shape[0]}, "
            f"{steps}, {batch})"
        )
    mean, std = y_all.mean(0), y_all.std(0).clamp_min(1e-12)
    y_std = ((y_all - mean) / std).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Regressor(n_targets=y_all.shape[1]).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    model.train()
    bar = tqdm(range(steps), desc="regressor", unit="step", disable=not progress, mininterval=1.0)
    for step in bar:
        idx = torch.randint(0, x_all.shape[0], (batch,), generator=gen)
        code = (
            torch.randint(0, 8, (batch,), generator=gen) if augment else torch.zeros(batch, dtype=torch.long)
        )
        x, y = dihedral(x_all[idx].float(), y_std[idx], code)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, steps, warmup, "cosine", min_ratio=0.0)
        loss = F.mse_loss(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}")
    model.eval()
    return model, mean, std


@torch.no_grad()
def predict(
    model: Regressor,
    images: Tensor | np.ndarray,
    target_mean: Tensor,
    target_std: Tensor,
    batch: int = 64,
    device: str | torch.device | None = None,
) -> Tensor:
    """Predicted targets (N, T) float64 in physical units (the standardisation undone) for (N, 1, H, W)
    images (clamped to [0, 1] by the model), on the CPU."""
    x_all = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if x_all.ndim != 4 or x_all.shape[1] != 1:
        raise ValueError(f"predict: expected (N, 1, H, W) images, got shape {tuple(x_all.shape)}")
    dev = device or next(model.parameters()).device
    model.eval()
    out = [
        model(x_all[i : i + batch].float().to(dev)).cpu().double() for i in range(0, x_all.shape[0], batch)
    ]
    return torch.cat(out) * target_std.double().cpu() + target_mean.double().cpu()


# ----------------------------------------------------------------------------------------------- scores
def squared_errors(pred: Tensor, truth: Tensor, names: Sequence[str] = TARGETS) -> dict[str, Tensor]:
    """Per-image squared errors (N,) float64 of each target, plus ``ELLIPTICITY`` (de1^2 + de2^2) when
    ``names`` holds lens_e1 and lens_e2."""
    if pred.shape != truth.shape or pred.shape[1] != len(names):
        raise ValueError(
            f"pred {tuple(pred.shape)} and truth {tuple(truth.shape)} must both be (N, {len(names)})"
        )
    d2 = (pred.double() - truth.double()).square()
    out = {name: d2[:, i] for i, name in enumerate(names)}
    if "lens_e1" in out and "lens_e2" in out:
        out[ELLIPTICITY] = out["lens_e1"] + out["lens_e2"]
    return out


def score(pred: Tensor, truth: Tensor, names: Sequence[str] = TARGETS) -> dict[str, dict[str, float]]:
    """Per target {"rmse", "bias"} (bias = mean(pred - truth)), in the targets' units; plus ``ELLIPTICITY``:
    {"rmse"} = sqrt(mean(de1^2 + de2^2)), the rms modulus of the complex ellipticity error."""
    sq = squared_errors(pred, truth, names)
    diff = pred.double() - truth.double()
    out = {
        name: {"rmse": float(sq[name].mean().sqrt()), "bias": float(diff[:, i].mean())}
        for i, name in enumerate(names)
    }
    if ELLIPTICITY in sq:
        out[ELLIPTICITY] = {"rmse": float(sq[ELLIPTICITY].mean().sqrt())}
    return out


def gap_closed(err_bicubic: float, err_model: float, err_hr: float) -> float:
    """(err_bicubic - err_model) / (err_bicubic - err_hr): the share of the bicubic-to-HR error gap a model
    closes (1: as HR, 0: as bicubic, < 0: worse than bicubic, > 1: better than HR). A ValueError when the gap
    is zero (|err_bicubic - err_hr| <= 1e-12): the share is undefined."""
    gap = float(err_bicubic) - float(err_hr)
    if abs(gap) <= _GAP_EPS:
        raise ValueError(
            f"gap_closed: bicubic and HR errors are equal ({err_bicubic!r} vs {err_hr!r}): no gap to close"
        )
    return (float(err_bicubic) - float(err_model)) / gap


def bootstrap_gap_closed(
    sq_bicubic: Mapping[str, Tensor],
    sq_model: Mapping[str, Tensor],
    sq_hr: Mapping[str, Tensor],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Paired bootstrap interval (lo, hi) at ``level`` of ``gap_closed`` on RMSEs, per key of the
    ``squared_errors`` dicts (the same test images resampled for all three); resamples with no gap are
    dropped, and (nan, nan) is returned if fewer than half remain."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, tuple[float, float]] = {}
    for key in sq_hr:
        eb, em, eh = _resampled_rmses(n_boot, gen, sq_bicubic[key], sq_model[key], sq_hr[key])
        gap = eb - eh
        ok = gap.abs() > _GAP_EPS
        if int(ok.sum()) < n_boot / 2:
            out[key] = (math.nan, math.nan)
            continue
        out[key] = _central_interval(((eb - em)[ok] / gap[ok]).numpy(), level)
    return out


def bootstrap_rmse_difference(
    sq_a: Mapping[str, Tensor],
    sq_b: Mapping[str, Tensor],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Paired bootstrap interval (lo, hi) at ``level`` of RMSE(a) - RMSE(b), per key of the ``squared_errors``
    dicts: an interval holding 0 means the two inputs are not told apart on these images."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, tuple[float, float]] = {}
    for key in sq_b:
        ea, eb = _resampled_rmses(n_boot, gen, sq_a[key], sq_b[key])
        out[key] = _central_interval((ea - eb).numpy(), level)
    return out


def _resampled_rmses(n_boot: int, gen: torch.Generator, *sq: Tensor) -> tuple[Tensor, ...]:
    """The RMSE (float64, (n_boot,)) of each per-image squared-error vector in ``sq`` over ``n_boot``
    resamples of its images, the same resamples for all (one draw from ``gen``, sized by the last)."""
    n = len(sq[-1])
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    return tuple(v.double()[idx].mean(1).sqrt() for v in sq)


def _central_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """(lo, hi): the quantiles of ``values`` that leave (1 - level) / 2 out on either side."""
    q = (1.0 - level) / 2
    return float(np.quantile(values, q)), float(np.quantile(values, 1 - q))


# ----------------------------------------------------------------------------------------------- study
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
        gen = load_model(source, device=device)
        if int(gen.scale) != scale:
            raise HpcSrError(f"--model {name}={source}: scale {gen.scale}, the set {data} has scale {scale}")
        inputs[name] = upscale(gen, lr_t, device=device, clamp=True).cpu()
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


# ----------------------------------------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = study_parser("downstream", __doc__ or "", prog)
    add_data(ap, "a simulated shard directory (with recorded parameters)")
    add_models(ap)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    add_seed(ap)
    add_limit(ap, what="test images")
    ap.add_argument("--train-limit", type=int, default=0, help="first N train images (0: all)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    add_device(ap)
    add_out(ap, "downstream")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = run(
            a.data,
            parse_models(a.model, reserved=(HR, BICUBIC)),
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
        return fail(ap.prog, exc)
    table = markdown(result)
    write_json(a.out / "downstream.json", result)
    atomic_write_text(a.out / "downstream.md", table)
    print(table, end="")
    print(f"wrote {a.out / 'downstream.json'} and {a.out / 'downstream.md'}")
    return 0
