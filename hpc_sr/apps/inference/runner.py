"""``run_inference``: plan -> ledger -> this rank's units -> engine -> finish -> report, resumable.

    rc = run_inference(model, payload, ["cutouts/"], "sr/", InferenceOptions(batch_size=64, device="cuda"))

Every rank (torchrun or SLURM variables, :meth:`hpc_sr.dist.env.DistEnv.from_environment`; no process group)
plans every input the same way and takes a fixed, pixel-balanced shard of all units
(:func:`~hpc_sr.apps.inference.plan.shard`), minus those the ledger already has done or skipped: the shards
do not depend on what other ranks finished meanwhile, so no unit is done twice within a run, whenever each
rank starts. A first run into a folder that already holds an output refuses it (``overwrite`` replaces it);
later runs resume from the ledger (:mod:`~hpc_sr.apps.inference.ledger`).

The engine (``opts.engine``: torch, onnx or auto, :mod:`~hpc_sr.apps.inference.onnx_engine`) is resolved
first, the same way on every rank; the one that runs is recorded in the ledger's fingerprint.

With ``handle_signals``, USR2/SIGTERM (:func:`hpc_sr.dist.signals.install_stop_flag`) stop the run at a batch
boundary: the finished units are written and recorded, the job is requeued (SLURM rank 0) and the run returns
``REQUEUE_EXIT_CODE``. At the end (under the ledger's lock) ``Format.finish`` runs for every input whose
units are all done, and ``out_dir/upscale_report.json`` is rewritten.

Per-image warnings are counted by kind (:class:`~hpc_sr.apps.inference.report.WarningTally`): the first of
each kind reaches ``on_warning`` as it comes (without one: is warned at the end), the rest are counted; at the
end one line per repeated kind (its count and a few example images) goes to stderr (or ``on_warning``, or is
warned), and each rank's counts (``.hpc_sr_ledger/warnings_XXXXX.json``, added up over the runs since the last
``overwrite``) are summed into the report. Formats get the run's provenance (:func:`provenance`: version,
model source, weights sha256, arch, engine, normalisation) with every unit's results.

Exit status: 0 when every unit of this rank is done (files holding no image are skipped, not failures);
1 when a unit or an input failed (named in the report; a rerun tries them again); ``REQUEUE_EXIT_CODE`` (3)
after a stop signal. Refusals (bad inputs, another run's settings) raise an HpcSrError (the CLI: status 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hpc_sr.apps import fits_io
from hpc_sr.apps.inference.engine import Engine, Outcome
from hpc_sr.apps.inference.fingerprint import run_fingerprint
from hpc_sr.apps.inference.formats import FORMATS, InferenceOptions, Unit, tagged_path
from hpc_sr.apps.inference.ledger import Ledger, file_sha256
from hpc_sr.apps.inference.onnx_engine import ENGINES, EngineError, OnnxGenerator, choose_engine
from hpc_sr.apps.inference.pixels import normalization_note
from hpc_sr.apps.inference.plan import Plan, plan_units, shard
from hpc_sr.apps.inference.predict import Predictor
from hpc_sr.apps.inference.progress import JobProgress
from hpc_sr.apps.inference.publish import DURABILITY
from hpc_sr.apps.inference.report import (
    REPORT,
    WarningTally,
    build_report,
    merge_tallies,
    summary_line,
    write_report,
)
from hpc_sr.atomic import atomic_write_text
from hpc_sr.config import SlurmConfig
from hpc_sr.dist.env import DistEnv
from hpc_sr.dist.envvars import env_int
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE, install_stop_flag, requeue_self
from hpc_sr.dist.slurm import MAX_REQUEUES_VAR
from hpc_sr.errors import DataError, HpcSrError
from hpc_sr.models.artifacts import CALIBRATION_KEY
from hpc_sr.version import __version__

SHOWN_SKIPS = 20  # files named one by one on stderr; the report lists them all
ON_ERROR = ("skip", "stop")


def check_options(opts: InferenceOptions) -> None:
    """HpcSrError naming the first option out of range."""
    if opts.normalize not in fits_io.NORMALIZE_MODES:
        raise DataError(f"normalize={opts.normalize!r}: choose one of {', '.join(fits_io.NORMALIZE_MODES)}")
    if opts.flux not in fits_io.FLUX_MODES:
        raise DataError(f"flux={opts.flux!r}: choose one of {', '.join(fits_io.FLUX_MODES)}")
    if opts.on_error not in ON_ERROR:
        raise HpcSrError(f"on_error={opts.on_error!r}: choose one of {', '.join(ON_ERROR)}")
    if opts.durability not in DURABILITY:
        raise HpcSrError(f"durability={opts.durability!r}: choose one of {', '.join(DURABILITY)}")
    if opts.engine not in ENGINES:
        raise HpcSrError(f"engine={opts.engine!r}: choose one of {', '.join(ENGINES)}")
    if opts.lr_blur is not None and not (math.isfinite(opts.lr_blur) and opts.lr_blur >= 0):
        raise HpcSrError(f"lr_blur={opts.lr_blur!r}: expected a FWHM >= 0 in LR pixels")
    bad_tile = opts.tile < 0 or opts.overlap < 0 or (opts.tile and opts.overlap >= opts.tile)
    if opts.batch_size < 1 or bad_tile or opts.samples < 0:
        raise HpcSrError(
            f"need batch_size >= 1, samples >= 0, tile >= 0 and 0 <= overlap < tile (when tiling); got "
            f"batch_size={opts.batch_size}, samples={opts.samples}, tile={opts.tile}, overlap={opts.overlap}"
        )


def check_lr_blur(model: nn.Module, opts: InferenceOptions) -> None:
    """A generator told its LR's blur needs ``--lr-blur``, and only such a generator takes it (HpcSrError)."""
    told = bool(getattr(model, "lr_blur_input", False))
    if told and opts.lr_blur is None:
        raise HpcSrError(
            "this generator is told its LR's blur (model.g.lr_blur_input): give --lr-blur FWHM, the FWHM in "
            "LR pixels of the Gaussian that takes the training HR's PSF to your images' (0 for a 2x2 mean)"
        )
    if not told and opts.lr_blur is not None:
        raise HpcSrError(f"--lr-blur {opts.lr_blur}: this generator does not take the LR-blur input "
                         "(model.g.lr_blur_input was false when it was trained)")


def history_lines(
    model: nn.Module,
    opts: InferenceOptions,
    values: dict[str, Any] | None,
    label: str,
    net: nn.Module | None = None,
    calibration: dict[str, Any] | None = None,
) -> list[str]:
    """The run's provenance (FITS HISTORY): version, arch, checkpoint, onnx engine, tiling, normalisation."""
    arch = getattr(model, "arch", None) or type(model).__name__
    lines = [f"hpc_sr {__version__} upscale x{opts.scale}: model {arch}"]
    if label:
        lines.append(f"hpc_sr checkpoint: {label}")
    if opts.engine == "onnx":
        lines.append(f"hpc_sr engine=onnx: {getattr(net, 'runtime', 'onnxruntime')}")
    lines.append(f"hpc_sr tile={opts.tile} overlap={opts.overlap} self_ensemble={opts.ensemble}")
    if opts.lr_blur is not None:
        lines.append(f"hpc_sr lr_blur={opts.lr_blur:g}: the LR blur given to the generator (FWHM, LR pixels)")
    lines.append(f"hpc_sr normalize={opts.normalize}: {normalization_note(opts.normalize, values)}")
    if opts.samples:
        lines.append(f"hpc_sr samples={opts.samples}: output = sample mean, sigma = their standard deviation")
        lines.append(f"hpc_sr sigma calibration: {calibration_note(calibration)}")
    return lines


def provenance(
    model: nn.Module,
    payload: dict[str, Any],
    opts: InferenceOptions,
    label: str,
    fingerprint: dict[str, Any],
    net: nn.Module | None = None,
) -> dict[str, str | int | bool]:
    """What an output says about the run that made it, as plain values (``Results.provenance``; HDF5:
    ``hpc_sr_<key>`` attributes): the hpc_sr version, the model (its source, step, arch, spec, weights sha256,
    the engine that ran it), the normalisation asked for and what it means for this model, the flux rule,
    tiling and, with samples, how sigma was calibrated."""
    ident = fingerprint["model"]
    arch = str(getattr(model, "arch", None) or ident["generator"].get("arch") or type(model).__name__)
    out: dict[str, str | int | bool] = {
        "version": str(fingerprint["hpc_sr"]),
        "model": label or str(payload.get("source") or arch),
        "model_arch": arch,
        "model_spec": json.dumps(ident["generator"], sort_keys=True),
        "model_sha256": str(ident["weights_sha256"]),
        "engine": opts.engine if opts.engine != "onnx" else f"onnx ({getattr(net, 'runtime', 'onnx')})",
        "normalize_option": opts.normalize,
        "normalization": normalization_note(opts.normalize, payload.get("data_values")),
        "flux_option": opts.flux,
        "tile": int(opts.tile),
        "overlap": int(opts.overlap),
        "self_ensemble": bool(opts.ensemble),
    }
    if payload.get("step") is not None:
        out["model_step"] = int(payload["step"])
    if payload.get("ema") is not None:
        out["model_ema"] = bool(payload["ema"])
    if ident.get("onnx_sha256"):
        out["onnx_sha256"] = str(ident["onnx_sha256"])
    if opts.samples:
        out["sigma_calibration"] = calibration_note(payload.get(CALIBRATION_KEY))
    return out


def calibration_note(record: dict[str, Any] | None) -> str:
    """How sigma was scaled, in one line: the stored spread calibration (where it was fitted) or none."""
    if not record:
        return "none: the raw standard deviation of the samples (no spread calibration stored with the model)"
    fit, check = record.get("fit") or {}, record.get("check") or {}
    where = ", ".join(
        f"{k} {v}" for k, v in (("data", fit.get("data")), ("split", check.get("split")),
                                ("date", fit.get("date"))) if v
    )  # fmt: skip
    return f"spread scales stored with the model ({where or 'no fit record'})"


def _device(opts: InferenceOptions, env: DistEnv) -> InferenceOptions:
    """``cuda`` without an index on a rank: the rank's own GPU (LOCAL_RANK)."""
    if opts.device == "cuda" and env.distributed:
        import torch

        return dataclasses.replace(opts, device=f"cuda:{env.local_rank % max(1, torch.cuda.device_count())}")
    return opts


def _announce_skips(plan: Plan) -> None:
    for _, reason in plan.skipped[:SHOWN_SKIPS]:
        fits_io.warn(f"skipped: {reason}")
    if len(plan.skipped) > SHOWN_SKIPS:
        fits_io.warn(
            f"skipped {len(plan.skipped) - SHOWN_SKIPS} more file(s) holding no image (see {REPORT})"
        )


def _refuse_foreign_outputs(units: list[Unit], ledger: Ledger) -> None:
    """A first run must not replace files it did not write: outputs found before any run started here."""
    if ledger.exists():
        return
    found = [u.target for u in units if u.target.exists()]
    if found and not ledger.exists():  # checked again: another rank may have started meanwhile
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise DataError(f"{found[0]} exists{more} (pass --overwrite / overwrite=True to replace it)")


def _remove_stale_temps(units: list[Unit]) -> None:
    """Temporary files (``.<name>.<random>.tmp``, :func:`hpc_sr.atomic.atomic_open`) of this rank's units'
    outputs, left by a killed run (no other process writes these outputs now)."""
    by_dir: dict[Path, set[str]] = {}
    for u in units:
        by_dir.setdefault(u.target.parent, set()).update(
            {u.target.name, tagged_path(u.target, "_sigma").name}
        )
    for folder, names in by_dir.items():
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.name.startswith(".") and e.name.endswith(".tmp") and e.name[1:].rsplit(".", 2)[0] in names:
                Path(e.path).unlink(missing_ok=True)


def _finish_inputs(
    plan: Plan, status: dict[str, dict[str, Any]], opts: InferenceOptions
) -> list[tuple[str, str]]:
    """``Format.finish`` for every input whose units are all done; the inputs it failed for."""
    by_src: dict[Path, list[Unit]] = {}
    for u in plan.units:
        by_src.setdefault(u.src, []).append(u)
    failed = []
    formats: dict[str, Any] = {}
    for src, units in by_src.items():
        if all(status.get(u.id, {}).get("status") == "done" for u in units):
            fmt = formats.setdefault(units[0].format, FORMATS[units[0].format].cls())
            try:
                fmt.finish(units, opts)
            except Exception as exc:  # noqa: BLE001 - reported as that input's failure
                failed.append(
                    (str(src), str(exc) if isinstance(exc, HpcSrError) else f"{src}: finish: {exc}")
                )
    return failed


def _warnings_file(ledger: Ledger, rank: int) -> Path:
    return ledger.root / f"warnings_{rank:05d}.json"


def _read_tally(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # none yet, or damaged: its counts are lost, not the run
    return doc if isinstance(doc, dict) else None


def _save_tally(ledger: Ledger, tally: WarningTally, overwrite: bool, env: DistEnv) -> list[dict[str, Any]]:
    """This rank's warning counts added to its earlier runs' (replaced after ``overwrite``; nothing written
    when this run had none); every rank's counts (this job's ranks), for the report. Under the ledger lock."""
    path = _warnings_file(ledger, env.rank)
    for stale in ledger.root.glob(f".{path.name}.*.tmp"):  # a killed writer's (writers hold the lock)
        stale.unlink(missing_ok=True)
    if tally.total or overwrite:
        earlier = None if overwrite else _read_tally(path)
        atomic_write_text(path, json.dumps(merge_tallies([earlier, tally.to_json()])) + "\n")
    return [t for r in range(env.world_size) if (t := _read_tally(_warnings_file(ledger, r)))]


def _wrap_up(
    plan: Plan,
    ledger: Ledger,
    opts: InferenceOptions,
    outcomes: list[Outcome],
    show: bool,
    env: DistEnv,
    tally: WarningTally,
    overwrite: bool,
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """Finish complete inputs, save the warning counts and rewrite the report, holding the ledger lock; show
    the warnings held back and print the summary line. Returns the ledger's status and the inputs whose
    finish failed."""
    out_dir = ledger.out_dir
    with ledger.lock():
        for stale in out_dir.glob(f".{REPORT}.*.tmp"):  # a killed writer's (writers hold the lock)
            stale.unlink(missing_ok=True)
        status = ledger.status()
        finish_failed = _finish_inputs(plan, status, opts)
        tallies = _save_tally(ledger, tally, overwrite, env)
        report = build_report(plan, status, out_dir, finish_failed, tallies)
        path = write_report(report, out_dir)
    for message in tally.shown:  # no on_warning: the first of each kind, now that no thread can swallow them
        fits_io.warn(message)
    repeated = tally.repeated()
    who = f"rank {env.rank}/{env.world_size}: " if env.distributed else ""
    for line in repeated:
        if show:
            print(f"hpc-sr upscale: {who}warning: {line}", file=sys.stderr)
        elif tally.forward is not None:
            tally.forward(line)
        else:
            fits_io.warn(line)
    if show:
        wrote = sum(len(o.outputs) for o in outcomes)
        print(f"hpc-sr upscale: {who}{summary_line(report, wrote, path)}", file=sys.stderr)
    return status, finish_failed


@dataclass
class RunResult:
    """What :func:`execute` did: exit status, plan, this rank's outcomes, the ledger's final status, the
    engine that ran (torch | onnx) and why it was chosen."""

    status: int
    plan: Plan
    outcomes: list[Outcome]
    ledger: dict[str, dict[str, Any]]
    engine: str = "torch"
    engine_reason: str = ""


def _engine(
    model: nn.Module, payload: dict[str, Any], opts: InferenceOptions
) -> tuple[InferenceOptions, nn.Module | None, str]:
    """``opts`` with the engine resolved (:func:`~hpc_sr.apps.inference.onnx_engine.choose_engine`), the
    onnx engine's module (None for torch) and why. ``auto`` falls back to torch when the export fails."""
    engine, why = choose_engine(model, opts)
    net = None
    if engine == "onnx":
        try:
            net = OnnxGenerator.for_model(model, payload, dataclasses.replace(opts, engine=engine))
        except EngineError as exc:
            if opts.engine != "auto" or opts.onnx_model:
                raise
            engine, why = "torch", f"auto: {exc}"
    return dataclasses.replace(opts, engine=engine), net, why


def requeue_limit() -> int:
    """Time-out requeues a stopped job may still ask for: ``HPC_SR_MAX_REQUEUES`` (the job's own
    ``--max-requeues``), else ``slurm.max_requeues``' default. Preemptions are always requeued."""
    limit = env_int(MAX_REQUEUES_VAR, SlurmConfig().max_requeues)
    return SlurmConfig().max_requeues if limit is None else limit


def execute(
    model: nn.Module,
    payload: dict[str, Any] | None,
    inputs: list[str],
    out_dir: str | Path,
    opts: InferenceOptions,
    *,
    overwrite: bool = False,
    progress: bool = True,
    model_label: str = "",
    handle_signals: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> RunResult:
    """:func:`run_inference` with what it did (for callers that want the outputs)."""
    flag = install_stop_flag() if handle_signals else None
    check_options(opts)
    check_lr_blur(model, opts)
    payload = payload or {}
    out_dir = Path(out_dir)
    env = DistEnv.from_environment()
    opts = _device(opts, env)
    opts, net, why = _engine(model, payload, opts)
    if progress and env.is_main:
        print(f"hpc-sr upscale: engine {opts.engine} ({why})", file=sys.stderr)
    plan = plan_units([str(i) for i in inputs], out_dir, opts)
    _announce_skips(plan)
    if plan.failed and opts.on_error == "stop":
        raise DataError(plan.failed[0][1])
    mine = shard(plan.units, env.rank, env.world_size)
    ledger = Ledger(out_dir, env.rank)
    if not overwrite:
        _refuse_foreign_outputs(mine, ledger)
    given = file_sha256(Path(opts.onnx_model)) if opts.onnx_model else ""
    fingerprint = run_fingerprint(opts, model, payload, given)
    ledger.open(fingerprint, overwrite=overwrite, world=env.world_size)
    tally = WarningTally(on_warning)
    engine: Engine | None = None
    try:
        status = {} if overwrite else ledger.status()
        finished = {u for u, r in status.items() if r["status"] in ("done", "skipped")}
        todo = [u for u in mine if u.id not in finished]
        _remove_stale_temps(todo)
        predict = Predictor(model, opts, payload.get(CALIBRATION_KEY), model_label, net=net)
        values, calibration = payload.get("data_values"), payload.get(CALIBRATION_KEY)
        history = history_lines(model, opts, values, model_label, net, calibration)
        about = provenance(model, payload, opts, model_label, fingerprint, net)
        engine = Engine(predict, opts, ledger, values, history, tally.add, about)
        all_todo = {u.id for u in plan.units if u.id not in finished}
        with JobProgress(ledger, all_todo, before=status, enabled=progress and env.is_main) as bar:
            engine.run(todo, should_stop=flag.requested if flag else lambda: False)
            bar.wait = bar.wait and not engine.stopped
    finally:
        outcomes = engine.outcomes if engine is not None else []
        final, finish_failed = _wrap_up(plan, ledger, opts, outcomes, progress, env, tally, overwrite)
        ledger.close()
    if engine.stopped:
        if handle_signals:
            requeue_self(requeue_limit())
        return RunResult(REQUEUE_EXIT_CODE, plan, outcomes, final, opts.engine, why)
    if finish_failed and opts.on_error == "stop":
        raise DataError(finish_failed[0][1])
    failed = plan.failed or finish_failed or any(o.status == "failed" for o in outcomes)
    return RunResult(1 if failed else 0, plan, outcomes, final, opts.engine, why)


def run_inference(
    model: nn.Module,
    payload: dict[str, Any] | None,
    inputs: list[str],
    out_dir: str | Path,
    opts: InferenceOptions,
    *,
    overwrite: bool = False,
    progress: bool = True,
    model_label: str = "",
    handle_signals: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> int:
    """Upscale ``inputs`` into ``out_dir`` as this rank's share of the job; the exit status (module doc).

    ``payload``: the generator's (``data_values``, spread calibration, spec; None for a bare module);
    ``progress``: the job's bar (rank 0) and the summary line on stderr; ``model_label`` names the
    checkpoint in FITS HISTORY; ``handle_signals`` installs the stop flag (the CLI; not for library calls);
    ``on_warning`` receives the first per-image warning of each kind as it comes (else it is warned at the
    end); repeats are counted (module docstring).
    """
    return execute(
        model,
        payload,
        inputs,
        out_dir,
        opts,
        overwrite=overwrite,
        progress=progress,
        model_label=model_label,
        handle_signals=handle_signals,
        on_warning=on_warning,
    ).status
