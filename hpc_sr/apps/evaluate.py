"""`hpc-sr evaluate`: a generator (checkpoint, run dir, exported G.pt) and bicubic on one split, side by side.

Several checkpoints (``--checkpoint A B``) are evaluated as their mean (hpc_sr.models.ensemble.ModelEnsemble).

Evaluation follows the DeepLense protocol: per image, data_range 1, SR clamped to [0, 1]; mean per-image PSNR,
pooled-MSE PSNR, SSIM, MSE, relative flux error; bicubic on the same images. Under torchrun the split is
sharded across ranks (indices rank::world) and the sums are all-reduced (hpc_sr.eval.loop), so the result is
exact.

A stochastic generator (``model.g.noise_channels > 0``) with ``samples=N`` (``--samples N``, N >= 6): the
``model`` row is one sample; ``sample_mean`` is the mean of N samples (as the generator gives them, then
clamped), and ``calibration`` the coverage of the samples' central 68 % interval (its ends clipped to
[0, 1]) per sample-mean brightness bin (hpc_sr.eval.uncertainty; target 68 +- 5 %). ``antithetic=True`` draws
the N samples as N/2 pairs (z, -z): a centred generator's (``model.g.noise_centred``) sample mean is then
exactly its centre.
``recalibrate_on="val"`` first fits one spread scale per brightness bin on that split's images
(hpc_sr.eval.recalibration), then reports the test split with the scaled samples (``calibration``) beside the
raw ones (``calibration_raw``); ``spread_scales=FILE`` applies scales fitted before instead.
``store_calibration=True`` (``--store-calibration``) then stores the fitted scales with the evaluated
generator (:func:`hpc_sr.models.artifacts.save_calibration`: a step directory's ``calibration.json`` sidecar,
or the G.pt rewritten), where ``hpc-sr upscale --samples`` finds them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from hpc_sr.atomic import atomic_write_text
from hpc_sr.dist import env as dist_env
from hpc_sr.errors import DataError, HpcSrError
from hpc_sr.eval.loop import evaluate_batches
from hpc_sr.models.artifacts import calibration_target, load_generator, save_calibration
from hpc_sr.models.ensemble import ModelEnsemble, self_ensemble

PHYSICS_ROWS = (
    ("arc PSNR", "arc_psnr", "{:.3f}"),
    ("LR residual", "lr_residual", "{:.2e}"),
    ("ring err vs HR [px]", "ring_err_vs_hr", "{:.3f}"),
    ("ring err vs clean [px]", "ring_err_vs_clean", "{:.3f}"),
    ("power low/HR", "band_ratio_low_vs_hr", "{:.3f}"),
    ("power mid/HR", "band_ratio_mid_vs_hr", "{:.3f}"),
    ("power high/HR", "band_ratio_high_vs_hr", "{:.3f}"),
    ("power high/clean", "band_ratio_high_vs_clean", "{:.3g}"),
)


class EvaluateError(HpcSrError, ValueError):
    """An evaluation that cannot be run as asked (e.g. samples of a deterministic generator)."""


def format_calibration(cal: dict[str, Any], target: float = 0.05) -> str:
    """The calibration table: per sample-mean brightness bin, share of pixels, coverage of the central
    interval (target ``level`` +- ``target``) and mean interval width."""
    level = cal["level"]
    rows = [("bin", "mean range", "pixels", f"{level:.0%} coverage", "width", "")]
    for b in [*cal["bins"], cal["overall"]]:
        ok = abs(b["coverage"] - level) <= target if b["pixels"] else False
        lo, hi = b["range"]
        rows.append((b["name"], f"[{lo:g}, {hi:g}]", f"{b['share']:.1%}", f"{b['coverage']:.1%}",
                     f"{b['width']:.2e}", "ok" if ok else "off"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(f"{cal['samples']} samples per image; target {level:.0%} +- {target:.0%} per bin")
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    """Fixed-width tables: model vs bicubic (and the noise ceiling), then the physics metrics side by side."""
    rows = [("", "PSNR", "PSNR pooled", "SSIM", "MSE", "flux err")]
    names = ("model", "sample_mean", "bicubic", "ceiling")
    for name in [k for k in names if result.get(k)]:
        m = result[name]
        rows.append(
            (
                name,
                f"{m['psnr']:.3f}",
                f"{m['psnr_pooled']:.3f}",
                f"{m['ssim']:.4f}",
                f"{m['mse']:.3e}",
                f"{m['flux_err']:.3e}",
            )
        )
    gain = result["model"]["psnr"] - result["bicubic"]["psnr"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    tail = f"n = {result['n']} images, gain over bicubic {gain:+.3f} dB (mean PSNR)"
    if result.get("ceiling"):
        tail += (f"; noise ceiling {result['ceiling_gain_db']:+.3f} dB: the model has "
                 f"{result['ceiling_fraction']:.0%} of it")
    if result.get("sample_mean"):  # a stochastic generator: 'model' is one sample; its mean is the estimate
        mean_gain = result["sample_mean"]["psnr"] - result["bicubic"]["psnr"]
        tail += f" (one sample)\nsample mean: gain over bicubic {mean_gain:+.3f} dB"
        if result.get("ceiling"):
            tail += f", {mean_gain / result['ceiling_gain_db']:.0%} of the noise ceiling"
    lines.append(tail)
    phys = result.get("physics")
    if phys:
        prow = [("", "model", "bicubic")]
        for label, key, fmt in PHYSICS_ROWS:
            if key in phys["model"] and phys["model"][key] == phys["model"][key]:  # not NaN
                prow.append((label, fmt.format(phys["model"][key]), fmt.format(phys["bicubic"][key])))
        w = [max(len(r[i]) for r in prow) for i in range(3)]
        lines += ["", *("  ".join(c.rjust(x) for c, x in zip(r, w)) for r in prow)]
        lines += [f"{key}: {note}" for key, note in result.get("physics_notes", {}).items()]
    cal = result.get("calibration")
    if cal:
        lines.append(
            f"\nsample mean of {cal['samples']}: {result['sample_mean']['psnr']:.3f} dB (one sample "
            f"{result['model']['psnr']:.3f}); "
            + ("antithetic pairs (z, -z)" if cal.get("antithetic")
               else f"infinite-sample estimate {cal['mean_psnr_inf']:.3f} dB")
        )
        if result.get("calibration_raw"):
            fitted = result["spread_scales"]
            scales = ", ".join(f"{v:.2f}" for v in fitted["scales"])
            lines.append(f"recalibrated: spread scales per brightness bin [{scales}] (fitted on "
                         f"{fitted['fitted_on']}); as the generator gives them:")
            lines.append(format_calibration(result["calibration_raw"]))
            lines.append("recalibrated:")
        lines.append(format_calibration(cal))
    return "\n".join(lines)


class ScienceMetrics:
    """Physics metrics of model and bicubic, and the noise ceiling on simulated splits (hpc_sr.eval.physics).

    Simulated splits (shards carrying the simulator's parameters) get the noise-free image for arc masks and
    the "vs clean" spectra, the lens centre for ring profiles, and the ceiling: the noise-free image made
    consistent with LR, whose error is only the HR noise LR cannot reveal (docs/EVALUATION.md).
    """

    def __init__(self, data: str | Path, split: str, mine: list[int], scale: int) -> None:
        from hpc_sr.data.lensing import is_simulator_layout
        from hpc_sr.data.lr_relation import lr_relation
        from hpc_sr.data.shards import load_manifest, read_split_params
        from hpc_sr.eval.metrics import MetricAccumulator
        from hpc_sr.eval.physics import PhysicsAccumulator

        manifest = load_manifest(data)
        params = read_split_params(data, split)
        simulated = params is not None and is_simulator_layout(manifest.param_names)
        self.params = torch.from_numpy(params[mine]) if simulated and params is not None else None
        self.preset = str(manifest.provenance.get("preset", "deeplense_sr"))
        self.param_names = list(manifest.param_names)
        self.scale, self.seen = scale, 0
        # lr_residual compares avg_pool(SR) with LR: kept where LR is the block mean of HR or a recorded LR
        # instrument gives the LR model (simulated two-instrument sets); absent, with the reason, otherwise
        try:
            relation = None if self.params is not None else lr_relation(data)
        except (DataError, OSError):
            relation = None  # not known: the residual stays, as before the relation was recorded
        self.lr_residual_note = (
            None
            if relation is None or relation.is_mean is True
            else f"absent: {relation.describe()}, and the set records no LR instrument to model LR with"
        )
        self.model, self.bicubic = PhysicsAccumulator(scale), PhysicsAccumulator(scale)
        self.ceiling = MetricAccumulator() if self.params is not None else None

    def update(self, lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> None:
        from hpc_sr.data.truth import ceiling_from_clean, simulation_truth
        from hpc_sr.eval.metrics import bicubic_upscale

        truth: dict[str, torch.Tensor] = {}
        if self.params is not None:
            p = self.params[self.seen : self.seen + lr.shape[0]]
            sim = simulation_truth(p, self.preset, hr.shape[-1], self.param_names, self.scale)
            truth = {k: v.to(hr.device) for k, v in sim.as_kwargs().items()}
            # the ceiling: the noise-free image (rendered once, above) made consistent with LR where LR is
            # the block mean of HR; the noise-free image itself where LR comes from an instrument of its own
            est = ceiling_from_clean(truth["clean"], lr, p, self.scale)
            assert self.ceiling is not None
            self.ceiling.update(est.float(), hr)
        self.seen += lr.shape[0]
        self.model.update(sr, hr, lr, **truth)
        self.bicubic.update(bicubic_upscale(lr, self.scale), hr, lr, **truth)

    def compute(
        self, device: torch.device, model: dict[str, float], bicubic: dict[str, float]
    ) -> dict[str, Any]:
        from hpc_sr.eval.loop import reduce_accumulator
        from hpc_sr.eval.physics import omit_metric

        for acc in (self.model, self.bicubic):
            reduce_accumulator(acc, device)
        physics = {"model": self.model.compute(), "bicubic": self.bicubic.compute()}
        out: dict[str, Any] = {"physics": physics}
        if self.lr_residual_note is not None:
            out["physics"] = omit_metric(physics, "lr_residual")
            out["physics_notes"] = {"lr_residual": self.lr_residual_note}
        if self.ceiling is not None:
            reduce_accumulator(self.ceiling, device)
            ceiling = self.ceiling.compute()
            ceiling_gain = ceiling["psnr"] - bicubic["psnr"]
            out.update(ceiling=ceiling, ceiling_gain_db=ceiling_gain,
                       ceiling_fraction=(model["psnr"] - bicubic["psnr"]) / ceiling_gain)
        return out


def evaluate(
    checkpoint: str | Path | Sequence[str | Path],
    data: str | Path,
    split: str = "test",
    json_out: str | Path | None = None,
    save_images: int = 0,
    images_dir: str | Path | None = None,
    batch_size: int = 16,
    ema: bool = True,
    ensemble: bool = False,
    limit: int = 0,
    quiet: bool = False,
    samples: int = 1,
    seed: int = 0,
    antithetic: bool = False,
    recalibrate_on: str | None = None,
    spread_scales: str | Path | None = None,
    store_calibration: bool = False,
    lr_blur: str | float | None = None,
) -> dict[str, Any]:
    """Evaluate a generator and bicubic on one split of a shard directory; returns the JSON-able result.

    A generator told its LR's blur (``model.g.lr_blur_input``) gets each pair's blur from ``lr_blur``: "data"
    (the default for such a generator: the set's own per-pair values, hpc_sr.data.lr_blur) or one FWHM in LR
    pixels for every pair; an EvaluateError for ``lr_blur`` with a generator that does not take it.

    ``samples`` > 1 (a stochastic generator only): also the mean of that many samples per image and the
    calibration of their central 68 % interval; ``seed`` fixes their noise (rank r draws from seed + r);
    ``antithetic``: the samples come in pairs (z, -z) (their mean is exactly a centred generator's centre).
    ``recalibrate_on``: a split whose first ``limit`` images (all: 0) fit per-bin spread scales first;
    ``spread_scales``: a JSON file of scales fitted before (hpc_sr.eval.recalibration.SpreadScales.load).
    ``store_calibration``: store the scales fitted by ``recalibrate_on`` with the (one) evaluated generator;
    ``result["calibration_stored"]`` names the file written.
    """

    env = dist_env.DistEnv.from_environment()
    device = dist_env.select_device(env)
    started_dist = env.distributed and not torch.distributed.is_initialized()
    finished = False
    dist_env.init_distributed(env, device)
    try:
        sources = [str(checkpoint)] if isinstance(checkpoint, (str, Path)) else [str(c) for c in checkpoint]
        if store_calibration:
            _check_store(sources, recalibrate_on)
            sources = [str(calibration_target(sources[0]))]  # the step dir stored to is the one evaluated
        model, payload = _load_model(sources, ema)
        model.to(device)
        blur = _lr_blur_for(model, lr_blur)
        sampler = (
            _Sampler(model, samples, seed + env.rank, device, ensemble, antithetic) if samples != 1 else None
        )
        scale = int(payload["scale"])
        _check_recalibration(sampler is not None, split, recalibrate_on, spread_scales)
        if sampler is not None and recalibrate_on:
            sampler.fit_scales(data, recalibrate_on, limit, batch_size, env, quiet, scale, blur)
        elif sampler is not None and spread_scales:
            from hpc_sr.eval.recalibration import SpreadScales

            try:
                sampler.use_scales(SpreadScales.load(spread_scales), f"file {spread_scales}")
            except ValueError as exc:
                raise EvaluateError(str(exc)) from None
        loader, n, mine = _split_loader(data, split, scale, limit, batch_size, env, lr_blur=blur)
        if images_dir is None:
            images_dir = Path(json_out).parent / "images" if json_out else Path("eval_images")
        images_dir = Path(images_dir)
        saved = 0

        def save_pictures(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> None:
            nonlocal saved
            if not env.is_main or saved >= save_images:
                return
            from hpc_sr.eval.pictures import save_comparison_png

            k = min(4, save_images - saved, lr.shape[0])
            save_comparison_png(
                images_dir / f"{split}_{saved:04d}.png",
                lr[:k].cpu(),
                sr[:k].cpu(),
                hr[:k].cpu(),
                scale=scale,
                max_rows=k,
                title=f"{' + '.join(Path(c).name for c in sources)} on {split}",
            )
            saved += k

        def predict(lr: torch.Tensor) -> torch.Tensor:
            if sampler is not None:
                return sampler.draw(lr)
            return self_ensemble(model, lr) if ensemble else model(lr)

        science = ScienceMetrics(data, split, mine=mine, scale=scale)

        def on_batch(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> None:
            save_pictures(lr, sr, hr)
            science.update(lr, sr, hr)
            if sampler is not None:
                sampler.update(hr)

        bar = tqdm(loader, desc=f"evaluate {split}", disable=quiet or not env.is_main, unit="batch")
        res = evaluate_batches(predict, bar, scale, device, on_batch=on_batch)
        result = {
            "n": res.model["n"],
            "model": res.model,
            "bicubic": res.bicubic,
            "checkpoint": sources[0] if len(sources) == 1 else sources,
            "data": str(data),
            "split": split,
            "ema": ema,
            "self_ensemble": ensemble,
            "step": payload.get("step"),
            **({} if blur is None else {"lr_blur": blur}),
            **science.compute(device, res.model, res.bicubic),
        }
        if sampler is not None:
            result.update(sampler.compute(device))
        if store_calibration and env.is_main:
            record = _calibration_record(result, payload, sampler)
            result["calibration_stored"] = str(save_calibration(sources[0], record, bool(payload["ema"])))
        if env.is_main:
            if not quiet:
                print(format_table(result))
                if saved:
                    print(f"comparison grids: {images_dir}/")
                if result.get("calibration_stored"):
                    print(f"spread calibration stored: {result['calibration_stored']}")
            if json_out:
                atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
        finished = True
        return result
    finally:
        if started_dist:
            dist_env.shutdown_distributed(wait_for_peers=finished)


def _lr_blur_for(model: torch.nn.Module, lr_blur: str | float | None) -> str | float | None:
    """The ``data.lr_blur`` setting the evaluated generator needs: None for one without the LR-blur input
    (an EvaluateError if ``lr_blur`` was given), "data" unless ``lr_blur`` says otherwise."""
    from hpc_sr.config import ConfigError
    from hpc_sr.data.lr_blur import lr_blur_setting

    try:
        setting = lr_blur_setting(lr_blur)
    except ConfigError as exc:
        raise EvaluateError(str(exc).replace("data.lr_blur", "--lr-blur")) from None
    if not getattr(model, "lr_blur_input", False):
        if setting is not None:
            raise EvaluateError(f"--lr-blur {lr_blur}: this generator does not take the LR-blur input "
                                "(model.g.lr_blur_input was false when it was trained)")
        return None
    return "data" if setting is None else setting


def _split_loader(
    data: str | Path, split: str, scale: int, limit: int, batch_size: int, env: dist_env.DistEnv,
    role: str = "", lr_blur: str | float | None = None,
) -> tuple[DataLoader, int, list[int]]:
    """This rank's share (indices rank::world) of the first ``limit`` images (0: all) of a split, batched;
    with the number of images over all ranks and this rank's indices. An empty split is a DataError.
    ``lr_blur``: LR carries each pair's LR blur as one more channel (hpc_sr.data.lr_blur)."""
    from hpc_sr.data.dataset import ShardDataset

    dataset = ShardDataset(data, split=split, scale=scale, lr_blur=lr_blur)
    n = len(dataset) if not limit else min(limit, len(dataset))
    if n == 0:
        raise DataError(f"{data}: split {split!r}{role} is empty")
    mine = list(range(env.rank, n, env.world_size))
    return DataLoader(Subset(dataset, mine), batch_size=batch_size), n, mine


def _load_model(sources: list[str], ema: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    """One generator, or the mean of several of the same scale (the first one's payload)."""
    loaded = [load_generator(c, ema=ema) for c in sources]
    if len(loaded) == 1:
        return loaded[0]
    scales = {int(p["scale"]) for _, p in loaded}
    if len(scales) > 1:
        raise EvaluateError(f"--checkpoint {' '.join(sources)}: an ensemble needs one scale, "
                            f"got scales {sorted(scales)}")
    try:
        model = ModelEnsemble([m for m, _ in loaded])
    except ValueError as exc:
        raise EvaluateError(str(exc)) from None
    return model.eval(), loaded[0][1]


def _check_recalibration(sampling: bool, split: str, fit_on: str | None, scales: str | Path | None) -> None:
    if (fit_on or scales) and not sampling:
        raise EvaluateError("--recalibrate-on / --spread-scales need --samples N of a stochastic generator")
    if fit_on and scales:
        raise EvaluateError("--recalibrate-on and --spread-scales exclude each other: fit or load, not both")
    if fit_on == split:
        raise EvaluateError(f"--recalibrate-on {fit_on}: fit the scales on another split than the one "
                            "evaluated, or the coverage is not a test")


def _check_store(sources: list[str], fit_on: str | None) -> None:
    if not fit_on:
        raise EvaluateError("--store-calibration stores the scales --recalibrate-on fits: add --samples N "
                            "--recalibrate-on val")
    if len(sources) > 1:
        raise EvaluateError("--store-calibration: scales fitted on an ensemble belong to no one checkpoint; "
                            "evaluate one generator")


def _calibration_record(result: dict[str, Any], payload: dict[str, Any], sampler: _Sampler) -> dict[str, Any]:
    """The record stored with a generator (format in :mod:`hpc_sr.models.artifacts`)."""
    from hpc_sr.models.artifacts import CALIBRATION_FORMAT, CALIBRATION_VERSION
    from hpc_sr.version import __version__

    cal, raw = result["calibration"], result["calibration_raw"]
    return {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "spread_scales": sampler.scales.to_dict(),
        "fit": {**sampler.fit, "samples": sampler.samples, "antithetic": sampler.antithetic,
                "seed": sampler.seed, "data": str(Path(result["data"]).resolve()),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "weights": {"source": str(payload.get("source")), "step": payload.get("step"),
                    "ema": bool(payload.get("ema"))},
        "check": {"split": result["split"], "images": result["n"], "coverage": cal["overall"]["coverage"],
                  "coverage_raw": raw["overall"]["coverage"],
                  "bins": {b["name"]: b["coverage"] for b in cal["bins"]}},
        "hpc_sr_version": __version__,
    }


class _Sampler:
    """``samples`` draws per image of a stochastic generator: the first is the ``model`` row's SR image; the
    mean and the calibration sums accumulate (hpc_sr.eval.uncertainty), reduced over ranks in compute()."""

    def __init__(self, model: torch.nn.Module, samples: int, seed: int, device: torch.device,
                 ensemble: bool, antithetic: bool = False) -> None:
        from hpc_sr.eval.metrics import MetricAccumulator
        from hpc_sr.eval.uncertainty import CalibrationAccumulator, interval_positions

        noise = int(getattr(model, "noise_channels", 0))
        if noise <= 0:
            raise EvaluateError(
                f"--samples {samples}: the generator is deterministic (model.g.noise_channels={noise}), "
                "every sample would be the same; drop --samples or evaluate a stochastic generator"
            )
        if ensemble:
            raise EvaluateError("--samples and --self-ensemble cannot be combined")
        try:
            interval_positions(samples)
        except ValueError as exc:
            raise EvaluateError(f"--samples {samples}: {exc}") from None
        if antithetic and samples % 2:
            raise EvaluateError(f"--samples {samples} --antithetic: antithetic pairs need an even number")
        self.model, self.samples, self.antithetic = model, samples, antithetic
        self.seed = seed
        self.fit: dict[str, Any] = {}  # split and images of the fit (fit_scales)
        self.gen = torch.Generator(device).manual_seed(seed)
        self.mean, self.cal = MetricAccumulator(), CalibrationAccumulator()
        self.cal_raw = CalibrationAccumulator()
        self.device = device
        self.scales: Any = None  # SpreadScales once fitted or loaded
        self.scales_from = ""
        self.last: torch.Tensor | None = None
        self.last_raw: torch.Tensor | None = None

    def _draw_raw(self, lr: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from hpc_sr.eval.uncertainty import draw_samples

        return draw_samples(self.model, lr, self.samples, gen, clamp=False, antithetic=self.antithetic)

    def fit_scales(self, data: str | Path, split: str, limit: int, batch_size: int,
                   env: dist_env.DistEnv, quiet: bool, scale: int,
                   lr_blur: str | float | None = None) -> None:
        """Fit per-bin spread scales on ``split`` (its own noise stream, so test draws are unchanged)."""
        from hpc_sr.eval.loop import reduce_accumulator
        from hpc_sr.eval.recalibration import SpreadScaleFitter

        loader, n, _ = _split_loader(data, split, scale, limit, batch_size, env, " (--recalibrate-on)",
                                     lr_blur=lr_blur)
        gen = torch.Generator(self.device).manual_seed(int(self.gen.initial_seed()) + 7919)
        fitter = SpreadScaleFitter(block=1)  # per pixel: calibrates the table's per-pixel bins
        with torch.no_grad():
            for lr, hr in tqdm(loader, desc=f"recalibrate on {split}", disable=quiet or not env.is_main,
                               unit="batch"):
                fitter.update(self._draw_raw(lr.to(self.device), gen), hr.to(self.device))
        reduce_accumulator(fitter, self.device)
        self.fit = {"split": split, "images": n}
        try:
            self.use_scales(fitter.compute(), f"the first {n} images of split {split!r}")
        except ValueError as exc:
            raise EvaluateError(str(exc)) from None

    def use_scales(self, scales: Any, source: str) -> None:
        self.scales, self.scales_from = scales, source

    def draw(self, lr: torch.Tensor) -> torch.Tensor:
        raw = self._draw_raw(lr, self.gen)
        self.last_raw = raw
        self.last = self.scales.apply(raw) if self.scales is not None else raw
        return self.last[0]  # unclamped: the physics rows see an exact LR residual

    def update(self, hr: torch.Tensor) -> None:
        assert self.last is not None and self.last_raw is not None
        # the estimate: the mean of the samples as the generator gives them, then clamped as every SR image
        # (the mean of clamped samples is biased up wherever the samples straddle 0: the background)
        self.mean.update(self.last.double().mean(0).clamp(0.0, 1.0), hr)
        self.cal.update(self.last.clamp(0.0, 1.0), hr, raw=self.last)
        if self.scales is not None:
            self.cal_raw.update(self.last_raw.clamp(0.0, 1.0), hr, raw=self.last_raw)
        self.last = self.last_raw = None

    def _cal(self, acc: Any) -> dict[str, Any]:
        cal = {**acc.compute(), "samples": self.samples, "antithetic": self.antithetic}
        if self.antithetic:  # var / n is the cost of independent draws: not defined for pairs (z, -z)
            cal["mean_psnr_inf"] = cal["mean_psnr_pooled_inf"] = float("nan")
        return cal

    def compute(self, device: torch.device) -> dict[str, Any]:
        from hpc_sr.eval.loop import reduce_accumulator

        for acc in (self.mean, self.cal, self.cal_raw):
            reduce_accumulator(acc, device)
        out: dict[str, Any] = {"sample_mean": self.mean.compute(), "calibration": self._cal(self.cal)}
        if self.scales is not None:
            out["calibration"]["recalibrated"] = True
            out["calibration_raw"] = self._cal(self.cal_raw)
            out["spread_scales"] = {**self.scales.to_dict(), "fitted_on": self.scales_from}
        return out
