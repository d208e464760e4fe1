"""Mutation check: does the test suite catch deliberate regressions of the package?

Each mutation in :data:`MUTATIONS` is one or more exact text replacements in ``hpc_sr/`` (``old`` must occur
exactly once in its file, or the tool stops before running anything, so the list cannot rot silently) plus
the few test node ids that should catch it. For every mutation the tool copies the repository's ``hpc_sr/``,
``tests/``, ``configs/``, ``tools/``, ``slurm/``, ``pyproject.toml`` and ``README.md`` into a temporary
directory, applies the edits there (the working tree is never touched), and runs
``python -m pytest -x -q <node ids>`` in that copy (cwd and ``PYTHONPATH`` = the copy, this interpreter,
``OMP_NUM_THREADS=1``) under a per-mutation timeout. A failing run means the mutation was *caught*; a passing
run means it *survived*.

Usage (from the repository root, with the project's virtual environment)::

    python tools/mutation_check.py                 # all mutations, 2 at a time; exit 1 if one survives
    python tools/mutation_check.py -j 1            # one at a time
    python tools/mutation_check.py --only ema_never_updates --only ssim_no_border_crop
    python tools/mutation_check.py --list          # names, edited files and test ids (validates the list)
    python tools/mutation_check.py --baseline      # the same test selections on the unmutated copy
    python tools/mutation_check.py --json out.json # also write the results as JSON
    python tools/mutation_check.py -v              # plus the pytest tail of every result that is not caught

Output: a table (mutation, tests run, result, seconds) and the total wall time. Results: ``caught`` (pytest
failed), ``timeout`` (killed after the mutation's timeout: counted as caught, but look at it), ``SURVIVED``
(pytest passed: a regression the selection misses) and ``ERROR`` (pytest could not run the selection: a node
id that no longer exists, no tests collected). ``--baseline`` expects every selection to pass; there
``passed`` is good and anything else is reported. Exit status: 0 when every mutation is caught (or, with
``--baseline``, every selection passes), 1 otherwise, 2 for a stale mutation list. The JSON holds, per
mutation, the result, seconds, pytest's exit code, ``failure`` (the failed node id and its first ``E`` line:
check that a mutation is caught for the right reason) and the tail of pytest's output. Each run gets its own
``--basetemp`` inside the copy, so concurrent runs never share pytest's temp directories.

The whole list runs in well under 15 minutes on 2 cores with ``-j 2``; keep new selections to a few sharp node
ids. A mutation that no existing test catches gets a behavioural test in ``tests/mutations/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("hpc_sr", "tests", "configs", "tools", "slurm", "pyproject.toml", "README.md")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache")
TAIL_CHARS = 1500


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``file`` (relative to the repository)."""

    file: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]
    timeout_s: float = 180.0


def _m(name: str, what: str, edits: list[tuple[str, str, str]], tests: list[str], timeout_s: float = 180.0
       ) -> Mutation:
    return Mutation(name, what, tuple(Edit(*e) for e in edits), tuple(tests), timeout_s)


_ENSEMBLE_LOOP = """            x = torch.rot90(lr, k, dims=(-2, -1))
            x = torch.flip(x, dims=(-1,)) if flip else x
            y = model(x)
            y = torch.flip(y, dims=(-1,)) if flip else y
            outs.append(torch.rot90(y, -k, dims=(-2, -1)))"""
_LATEST_WRITE = """        atomic_write_text(self.dir / LATEST, final.name + "\\n")
"""
_BICUBIC_FALSE, _BICUBIC_TRUE = 'mode="bicubic", align_corners=False', 'mode="bicubic", align_corners=True'
_AGREEMENT_TEST = ("tests/mutations/test_step_agreement.py::"
                   "test_one_ranks_stop_signal_and_nan_loss_decide_the_step_on_both_ranks")
_BEFORE_RENAME = """        replaced = None
        if final.exists():  # re-saving a step after a resume"""

MUTATIONS: tuple[Mutation, ...] = (
    _m("ensemble_no_transforms", "self-ensemble averages 8 copies of model(lr), no flips/rotations",
       [("hpc_sr/models/ensemble.py", _ENSEMBLE_LOOP, "            outs.append(model(lr))")],
       ["tests/models/test_ensemble.py::test_ensemble_equals_the_mean_of_transformed_outputs"]),
    _m("grad_accum_no_divisor", "DDP backward of loss, not loss / grad_accum (accumulated gradients x G)",
       [("hpc_sr/train/backends/ddp.py", "scale(loss / self.grad_accum)", "scale(loss)")],
       ["tests/train/test_trainer.py::test_gradient_accumulation_matches_one_big_batch"]),
    _m("ema_never_updates", "EMA.update moves nothing (lerp weight 0)",
       [("hpc_sr/train/ema.py", "ema_value.lerp_(value.to(ema_value.dtype), 1.0 - decay)",
         "ema_value.lerp_(value.to(ema_value.dtype), 0.0)")],
       ["tests/train/test_ema.py::test_ema_tracks_parameters_and_buffers_in_float32"]),
    _m("crop_hr_off_by_one_lr_pixel", "HR crop starts one LR pixel (scale HR pixels) lower than the LR crop",
       [("hpc_sr/data/augment.py", "_gather(hr, idx, y * scale, x * scale,",
         "_gather(hr, idx, (y + 1) * scale, x * scale,")],
       ["tests/data/test_augment.py::test_crop_and_augment_matches_rot90_and_flip_per_sample"]),
    _m("crop_hr_off_by_one_lr_column", "HR crop starts one LR pixel right of the LR crop (stays in bounds)",
       [("hpc_sr/data/augment.py", "_gather(hr, idx, y * scale, x * scale,",
         "_gather(hr, idx, y * scale, (x + 1) * scale,")],
       ["tests/data/test_augment.py::test_crop_and_augment_matches_rot90_and_flip_per_sample"]),
    _m("lr_consistency_skipped", "lr_consistent generators skip the projection",
       [("hpc_sr/models/layers.py", "projected = lr_consistency_projection(out, lr, self.scale)",
         "projected = out")],
       ["tests/models/test_generator_contract.py::test_lr_consistent_output_pools_back_to_the_input"]),
    _m("lr_blur_projects_blurred_pairs", "a generator told its LR's blur projects blurred images too",
       [("hpc_sr/models/layers.py", "out = projected if blur is None else torch.where(",
         "out = projected if True else torch.where(")],
       ["tests/models/test_lr_blur_input.py::test_every_arch_takes_the_blur_and_projects_only_block_means"]),
    _m("resident_hr_rows_with_lr_channels", "resident crops lay out HR rows with LR's channel count",
       [("hpc_sr/data/augment.py", "k, ch_hr = self.scale, self.hr.shape[1]", "k, ch_hr = self.scale, ch")],
       ["tests/data/test_lr_blur.py::test_resident_crops_keep_lr_hr_and_blur_aligned"]),
    _m("resume_rng_not_restored", "resume does not restore the per-rank RNG states",
       [("hpc_sr/train/checkpointer.py", 'rng.set_rng_state(rank_state["rng"])', "pass")],
       ["tests/mutations/test_resume_rng.py::test_resume_continues_the_global_rng_streams_of_the_saved_run"]),
    _m("resume_stream_not_restored", "resume does not restore the sampler/stream position",
       [("hpc_sr/train/checkpointer.py", 'stream.load_state_dict(rank_state["stream"])', "pass")],
       ["tests/train/test_trainer.py::test_exact_resume_equals_uninterrupted_run[memory]"]),
    _m("latest_before_rename", "checkpoint `latest` is written before step_N is renamed into place",
       [("hpc_sr/train/checkpoint.py", _LATEST_WRITE, ""),
        ("hpc_sr/train/checkpoint.py", _BEFORE_RENAME, _LATEST_WRITE + _BEFORE_RENAME)],
       ["tests/reliability/test_checkpoint_faults.py::"
        "test_sigkill_at_each_save_stage_keeps_the_previous_checkpoint"], timeout_s=300.0),
    _m("stop_signal_not_agreed", "the step's flags (stop, non-finite G/D) are not MAX-reduced over ranks",
       [("hpc_sr/train/step.py", "agreed = max_over_ranks(flags).tolist()  # the one collective",
         "agreed = flags.tolist()  # the one collective")],
       [_AGREEMENT_TEST]),
    _m("stop_signal_local", "the flags are reduced, but each rank keeps its own stop signal",
       [("hpc_sr/train/step.py", "res.stop_signal = int(agreed[0])\n    if agreed[1]",
         "res.stop_signal = int(stop_signal)\n    if agreed[1]")],
       [_AGREEMENT_TEST]),
    _m("gan_fake_label_one", "BCE discriminator loss labels fakes 1.0",
       [("hpc_sr/models/losses/adversarial.py", "_bce(real_logits, 1.0) + _bce(fake_logits, 0.0)",
         "_bce(real_logits, 1.0) + _bce(fake_logits, 1.0)")],
       ["tests/models/test_losses.py::test_bce_values_and_with_logits"]),
    _m("model_bicubic_align_corners", "the generators' bicubic skip uses align_corners=True",
       [("hpc_sr/models/layers.py", _BICUBIC_FALSE, _BICUBIC_TRUE)],
       ["tests/models/test_generator_contract.py::test_the_skip_is_the_metrics_bicubic_without_align_corners"]),
    _m("metric_bicubic_align_corners", "the bicubic baseline of the metrics uses align_corners=True",
       [("hpc_sr/eval/metrics.py", _BICUBIC_FALSE, _BICUBIC_TRUE)],
       ["tests/eval/test_metrics.py::test_bicubic_equals_cubic_convolution_formula"]),
    _m("ssim_no_border_crop", "SSIM averaged over the whole map, border included",
       [("hpc_sr/eval/metrics.py", "return full[..., _BORDER:-_BORDER, _BORDER:-_BORDER].flatten(1).mean(1)",
         "return full.flatten(1).mean(1)")],
       ["tests/eval/test_metrics.py::test_per_image_metrics_match_skimage"]),
    _m("wcs_crpix_not_rescaled", "rescale_wcs_header keeps CRPIX (the sky shifts under the new pixels)",
       [("hpc_sr/apps/fits_wcs.py", "out[key] = output_pixel(float(out.get(key, 0.0)), s)",
         "out[key] = float(out.get(key, 0.0))")],
       ["tests/apps/test_upscale_fits_io.py::test_rescaled_wcs_keeps_the_sky_position_of_every_pixel"]),
    _m("psnr_pooled_as_mean", "reported psnr is the PSNR of the pooled MSE, not the mean of per-image PSNRs",
       [("hpc_sr/eval/metrics.py", '"psnr": means["psnr"],', '"psnr": float(psnr_from_mse(means["mse"])),')],
       ["tests/eval/test_metrics.py::test_pooled_and_mean_psnr_differ_and_are_each_right"]),
    _m("v1_migration_drops_blocks", "the v1 flat key model.blocks is no longer migrated",
       [("hpc_sr/config.py", '    "blocks": ("g", "options", "blocks"),\n', "")],
       ["tests/test_config.py::test_v1_flat_model_keys_migrate_in_files_and_overrides"]),
    _m("skip_tail_not_zeroed", "zero_init_if_skip leaves the last layer random (untrained != bicubic)",
       [("hpc_sr/models/layers.py", "                nn.init.zeros_(p)", "                pass")],
       ["tests/models/test_generator_contract.py::test_untrained_equals_bicubic_exactly_and_differs_without_skip"]),
    _m("runlock_ignores_live_pid", "a same-host holder whose process is alive is judged stale",
       [("hpc_sr/dist/runlock.py", "            if alive:\n                raise self._held_error",
         "            if False:\n                raise self._held_error")],
       ["tests/dist/test_runlock.py::test_live_same_host_pid_without_flock_is_held_and_a_reused_pid_is_not"]),
    _m("runlock_ignores_fresh_heartbeat", "another host's lock with a fresh heartbeat is taken over",
       [("hpc_sr/dist/runlock.py", "if age <= limit:", "if age < 0:")],
       ["tests/dist/test_runlock.py::test_other_host_lock_stale_by_heartbeat_is_taken_over_a_fresh_one_is_not"]),
    _m("memory_stream_ranks_overlap", "every rank of the resident stream takes the same share of the epoch",
       [("hpc_sr/data/memory_stream.py", "perm[self.rank :: self.world]", "perm[0 :: self.world]")],
       ["tests/data/test_memory_stream.py::test_memory_stream_ranks_are_disjoint_within_an_epoch"]),
    _m("per_pixel_flux_not_divided", "per-pixel units (counts) are not divided by scale**2 on upscale",
       [("hpc_sr/apps/inference/pixels.py", 'return scale**2 if prep.flux == "per-pixel" else 1',
         "return 1")],
       ["tests/apps/test_upscale_files.py::test_counts_conserve_total_flux_and_keep_the_header"]),
    # beyond the brief's list: places where a silent regression would bias results
    _m("val_uses_raw_generator", "validation scores the raw generator instead of its EMA",
       [("hpc_sr/train/trainer.py",
         'model = self.ema.module if self.ema is not None else self.backend.module("g")',
         'model = self.backend.module("g")')],
       ["tests/mutations/test_validation_ema.py::test_validation_metrics_are_those_of_the_ema_generator"]),
    _m("grad_clip_ignored", "train.grad_clip is not applied (norm computed, gradients not clipped)",
       [("hpc_sr/train/backends/ddp.py", "torch.nn.utils.clip_grads_with_norm_(params, clip, norm)", "pass")],
       ["tests/train/test_precision.py::test_gradient_clipping_bounds_the_update"]),
    _m("prune_drops_best", "keep-last-K pruning no longer keeps the best checkpoint",
       [("hpc_sr/train/checkpoint.py", "            keep.add(best)\n", "            pass\n")],
       ["tests/train/test_trainer.py::test_keep_last_and_best_are_kept"]),
    _m("metrics_sr_not_clamped", "SR is scored unclamped (overshoots above 1 or below 0 count)",
       [("hpc_sr/eval/metrics.py", "sr64 = sr.detach().to(torch.float64).clamp(0.0, 1.0)",
         "sr64 = sr.detach().to(torch.float64)")],
       ["tests/eval/test_metrics.py::test_sr_is_clamped_inside"]),
)


@dataclass
class Result:
    name: str
    tests: list[str]
    status: str  # caught | timeout | SURVIVED | ERROR | passed (baseline)
    seconds: float
    returncode: int | None
    failure: str = ""  # the first failed node id and assertion line, when pytest reported one
    tail: str = field(default="", repr=False)


class StaleMutationError(RuntimeError):
    """An edit's ``old`` text is not found exactly once: the mutation list no longer matches the code."""


def check_mutations(mutations: tuple[Mutation, ...], root: Path = REPO) -> None:
    """Every edit must apply exactly once, in order, to the files under ``root``; names must be unique."""
    problems: list[str] = []
    names = [m.name for m in mutations]
    problems += [f"duplicate mutation name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
    for m in mutations:
        if not m.edits or not m.tests:
            problems.append(f"{m.name}: needs at least one edit and one test")
        texts: dict[str, str] = {}
        for e in m.edits:
            path = root / e.file
            if e.file not in texts:
                if not path.is_file():
                    problems.append(f"{m.name}: {e.file} does not exist")
                    continue
                texts[e.file] = path.read_text()
            count = texts[e.file].count(e.old)
            if count != 1:
                problems.append(f"{m.name}: {e.file}: expected the old text exactly once, found {count}x: "
                                f"{e.old[:80]!r}")
                continue
            texts[e.file] = texts[e.file].replace(e.old, e.new)
        for t in m.tests:
            if not (root / t.split("::")[0]).exists():
                problems.append(f"{m.name}: test file {t.split('::')[0]} does not exist")
    if problems:
        raise StaleMutationError("stale mutation list:\n  " + "\n  ".join(problems))


def make_copy(dest: Path, root: Path = REPO) -> None:
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORED, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def apply_edits(copy: Path, edits: tuple[Edit, ...]) -> None:
    for e in edits:
        path = copy / e.file
        text = path.read_text()
        if text.count(e.old) != 1:  # checked before, but the copy is what runs
            raise StaleMutationError(f"{e.file}: old text not found exactly once in the copy: {e.old[:80]!r}")
        path.write_text(text.replace(e.old, e.new))


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def check_isolation(copy: Path) -> None:
    """The copy's ``hpc_sr`` must be the one imported (not the editable install of the working tree)."""
    out = subprocess.run([sys.executable, "-c", "import hpc_sr; print(hpc_sr.__file__)"], cwd=copy,
                         env=_env(copy), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        raise RuntimeError(f"the copy in {copy} imports hpc_sr from {out}: mutations would not be tested")


def run_one(m: Mutation, baseline: bool = False) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"mut-{m.name}-") as tmp:
        copy = Path(tmp)
        make_copy(copy)
        if not baseline:
            apply_edits(copy, m.edits)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--tb=short", "-p", "no:cacheprovider",
               f"--basetemp={copy / '.pytest-tmp'}", *m.tests]  # own tmp_path root: runs are concurrent
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=copy, env=_env(copy), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=m.timeout_s)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the pytest run and every process it started
            out, _ = proc.communicate()
            rc = None
        seconds = time.monotonic() - start
    if rc is None:
        status = "timeout"
    elif baseline:
        status = "passed" if rc == 0 else "ERROR"
    elif rc == 0:
        status = "SURVIVED"
    elif rc in (1, 2):  # tests failed / collection or import error under the mutation
        status = "caught"
    else:  # 3 internal error, 4 usage (unknown node id), 5 nothing collected
        status = "ERROR"
    return Result(m.name, list(m.tests), status, round(seconds, 1), rc, _failure(out), out[-TAIL_CHARS:])


def _failure(out: str) -> str:
    """``FAILED <node id>`` and the first ``E`` line of pytest's report (what caught the mutation)."""
    lines = out.splitlines()
    failed = next((ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))), "")
    error = next((ln[1:].strip() for ln in lines if ln.startswith("E ") and ln[1:].strip()), "")
    return " | ".join(x for x in (failed.split(" - ")[0], error[:200]) if x)


def _short(test: str) -> str:
    path, _, node = test.partition("::")
    return f"{Path(path).name}::{node}" if node else Path(path).name


def print_table(results: list[Result], wall: float, jobs: int, load: tuple[float, float], what: str) -> None:
    rows = [(r.name, " ".join(_short(t) for t in r.tests), r.status, f"{r.seconds:.1f}") for r in results]
    head = ("mutation", "tests", "result", "s")
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(4)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths)) + "  " + cells[3].rjust(widths[3])

    print(fmt(head))
    print(fmt(tuple("-" * w for w in widths)))
    for row in rows:
        print(fmt(row))
    counts = {s: sum(r.status == s for r in results) for s in dict.fromkeys(r.status for r in results)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"\n{len(results)} {what}: {summary}; wall {wall:.0f} s with -j {jobs} on {os.cpu_count()} CPUs "
          f"(1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-j", "--jobs", type=int, default=2, help="mutations run at once (default 2)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this (repeatable)")
    p.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    p.add_argument("--baseline", action="store_true", help="run the selections on the unmutated copy")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print the pytest tail of surprising results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"-j/--jobs must be at least 1, got {args.jobs}")
    try:
        check_mutations(MUTATIONS)
    except StaleMutationError as exc:
        print(exc, file=sys.stderr)
        return 2
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.only if n not in by_name]
    if unknown:
        print(f"unknown mutation(s) {unknown}; known: {', '.join(by_name)}", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTATIONS)
    if args.list:
        for m in chosen:
            files = ", ".join(dict.fromkeys(e.file for e in m.edits))
            print(f"{m.name}: {m.what}\n    edits {files}\n    tests {' '.join(m.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mut-isolation-") as tmp:
        make_copy(Path(tmp))
        check_isolation(Path(tmp))
    load0 = os.getloadavg()[0]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, m, args.baseline) for m in chosen]
        results = []
        for f in futures:
            r = f.result()
            results.append(r)
            print(f"[{len(results)}/{len(chosen)}] {r.name}: {r.status} ({r.seconds:.1f} s)", file=sys.stderr,
                  flush=True)
    wall = time.monotonic() - start
    load = (load0, os.getloadavg()[0])
    print_table(results, wall, args.jobs, load, "unmutated selections" if args.baseline else "mutations")
    good = "passed" if args.baseline else "caught"
    accepted = (good,) if args.baseline else (good, "timeout")
    surprising = [r for r in results if r.status not in accepted]
    if args.verbose:
        for r in surprising:
            print(f"\n--- {r.name} ({r.status}, rc {r.returncode}) ---\n{r.tail}")
    if args.json:
        payload = {
            "mode": "baseline" if args.baseline else "mutations",
            "wall_s": round(wall, 1), "jobs": args.jobs, "cpus": os.cpu_count(), "load_average": load,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if surprising else 0


if __name__ == "__main__":
    sys.exit(main())
