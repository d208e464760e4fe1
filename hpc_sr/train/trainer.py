"""The training loop: phase 1 trains G with its pixel-type terms (SRResNet-style), phase 2 the GAN (G and D).

    Trainer(cfg, env, device).run()     # 0 when done, REQUEUE_EXIT_CODE after a signal-triggered save

Each iteration reads as: learning rates (pure functions of the step) -> one optimiser step
(:func:`hpc_sr.train.step.optimizer_step`) -> EMA -> then each component that is due acts: the reporter
(step line), the validator (val split), the checkpointer (save) -> stop if any rank was signalled, or early
when ``train.early_stop_patience`` validations in a row did not improve the val PSNR. The loop
talks only to the back-end interface (DDP or DeepSpeed) and to components that own their work and cadence.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hpc_sr.config import Config, config_to_dict, save_config
from hpc_sr.data.folds import PAIRS_FILE, describe_pairs, selects_pairs, write_pairs
from hpc_sr.data.lr_relation import lr_is_mean
from hpc_sr.data.streams import make_train_stream, make_val_loader
from hpc_sr.data.values import loader_values
from hpc_sr.dist import collectives
from hpc_sr.dist.env import DistEnv
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE, install_stop_flag, requeue_self
from hpc_sr.errors import TrainingError
from hpc_sr.models.artifacts import resolved_model
from hpc_sr.train import faults, rng
from hpc_sr.train.backends import make_backend
from hpc_sr.train.checkpoint import CheckpointManager
from hpc_sr.train.checkpointer import RunRecord, TrainingCheckpointer
from hpc_sr.train.components import (
    RunPlan,
    build_discriminator,
    build_generator,
    check_config,
    init_generator,
)
from hpc_sr.train.ema import ModelEMA
from hpc_sr.train.logger import RunLogger
from hpc_sr.train.progress import TrainProgress
from hpc_sr.train.reporter import TrainReporter
from hpc_sr.train.schedule import phase_lrs
from hpc_sr.train.step import StepOptions, StepResult, optimizer_step
from hpc_sr.train.validator import Validator


def micro_batch_size(global_batch: int, grad_accum: int, world_size: int) -> int:
    """Per-rank micro-batch; the global batch must split evenly over ranks and accumulation steps."""
    parts = world_size * grad_accum
    if global_batch % parts:
        raise TrainingError(
            f"data.batch_size={global_batch} is not divisible by world size {world_size} x "
            f"train.grad_accum={grad_accum}"
        )
    return global_batch // parts


def check_writable(run_dir: Path) -> None:
    """Fail before training starts when the run directory cannot be written (read-only, disk full)."""
    probe = run_dir / f".write-check-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 65536)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise TrainingError(f"run directory {run_dir} is not writable: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


class Trainer:
    """Builds models, back-end, data and components from a Config; :meth:`run` trains to ``train.steps``.

    ``plan`` is the config already checked (:func:`~hpc_sr.train.components.check_config`; checked here when
    not given). ``guard`` is called before anything is published into the run directory (checkpoints,
    ``latest``, metrics lines) and raises when this process no longer owns it (the run lock's check).
    """

    def __init__(
        self,
        cfg: Config,
        env: DistEnv,
        device: torch.device,
        resume: str = "auto",
        *,
        plan: RunPlan | None = None,
        guard: Callable[[], None] | None = None,
    ) -> None:
        plan = plan or check_config(cfg)
        self.cfg, self.env, self.device = cfg, env, device
        t = cfg.train
        self.run_dir = cfg.run_dir
        if env.is_main:
            check_writable(self.run_dir)
            save_config(cfg, self.run_dir / "config.yaml")
            if selects_pairs(cfg.data):  # a fold / the first N pairs: the exact indices, beside the config
                write_pairs(cfg.data, self.run_dir / PAIRS_FILE)
        collectives.barrier()
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        self.micro = micro_batch_size(cfg.data.batch_size, t.grad_accum, env.world_size)
        self.gan = plan.discriminator is not None
        self.scale = cfg.data.scale

        self.backend = make_backend(cfg, device, env.world_size)
        # every rank builds the same models: parameters AND buffers (spectral-norm vectors, which DeepSpeed
        # does not broadcast)
        rng.seed_everything(t.seed)
        generator = build_generator(plan.generator, self.scale)
        if t.init_g:
            init_generator(generator, t.init_g, cfg.model.g, self.scale)
        discriminator = build_discriminator(plan.discriminator) if plan.discriminator is not None else None
        rng.seed_everything(t.seed + env.rank)  # then each rank its own stream
        self.backend.add("g", generator, t.lr_g)
        if discriminator is not None:
            self.backend.add("d", discriminator, t.lr_d)
        self.ema = ModelEMA(self.backend.module("g"), t.ema_decay) if t.ema_decay > 0 else None
        self.terms = plan.terms
        self.step_opts = StepOptions(  # fixed for the run; the GAN phase's copy differs in `gan` only
            grad_accum=t.grad_accum,
            n_d=t.n_d,
            adversarial_kind=plan.adversarial_kind,
            channels_last=t.channels_last,
            samples_per_input=plan.samples_per_input,
            antithetic_noise=cfg.model.g.noise_channels if cfg.model.g.noise_centred else 0,
        )
        self._phase_opts = {"pretrain": self.step_opts, "gan": replace(self.step_opts, gan=True)}

        self.stream = make_train_stream(cfg.data, t.seed, env, device, self.micro)
        self.val_loader = make_val_loader(cfg.data, t.seed, env, batch_size=max(1, min(16, self.micro)))
        self.log = RunLogger(cfg.log, self.run_dir, env.rank, env.world_size, guard=guard)
        if selects_pairs(cfg.data):
            self.log.console(describe_pairs(cfg.data))
        self.reporter = TrainReporter(self.log, every=cfg.log.log_every, last_step=t.steps, device=device)
        self.validator = Validator(
            self.val_loader,
            scale=self.scale,
            device=device,
            is_main=env.is_main,
            log=self.log,
            every=t.val_every,
            image_every=cfg.log.image_every,
            last_step=t.steps,
            lr_is_mean=lr_is_mean(cfg.data),
        )
        record = RunRecord(
            config=config_to_dict(cfg),
            model=cfg.model,
            resolved_model=resolved_model(cfg.model),
            scale=self.scale,
            world_size=env.world_size,
            backend=self.backend.name,
            micro_batch=self.micro,
            data_values=loader_values(self.val_loader),
        )
        self.checkpointer = TrainingCheckpointer(
            CheckpointManager(self.run_dir, keep_last=t.keep_last, rank=env.rank, guard=guard),
            record,
            every=t.ckpt_every,
            last_step=t.steps,
            pretrain_steps=t.pretrain_steps,
            device=device,
        )
        self.stop = install_stop_flag()  # shared with a launcher that installed it earlier
        self.progress = TrainProgress()
        self.lrs: dict[str, float] = {}
        self.poisoned_steps = faults.nan_steps()
        self.step_sleep_s = faults.step_sleep_s()
        self.resumed_from = self.checkpointer.resume(
            resume, self.progress, self.backend, self.ema, self.stream
        )
        resumed = str(self.resumed_from) if self.resumed_from is not None else None
        self.log.record("start", self.step, {"resumed_from": resumed})
        if self.resumed_from is not None:
            self.log.console(f"resumed from {self.resumed_from} at step {self.step}")

    @property
    def step(self) -> int:
        return self.progress.step

    # ------------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        """Train to ``train.steps``; returns 0, or REQUEUE_EXIT_CODE after a signal-triggered save."""
        t = self.cfg.train
        try:
            # a run resumed from its early-stop checkpoint (patience already spent) is done at once
            stop_early = self._patience_spent()
            while self.step < t.steps and not stop_early:
                phase = self.phase()
                self.lrs = phase_lrs(t, self.step, self.gan)
                for name, lr in self.lrs.items():
                    self.backend.set_lr(name, lr)
                res = self.train_step(phase)
                self.progress.step += 1
                self._after_step(phase, res)
                if self.reporter.due(self.step):
                    self.reporter.report(self.step, phase, self.lrs, self.progress.skipped_total)
                if self.validator.due(self.step):
                    self.validate()
                    # from the validator's metrics, reduced over all ranks: every rank decides alike
                    stop_early = self._patience_spent()
                if self.checkpointer.due(self.step) or stop_early:
                    self.save()  # early stop: a final checkpoint (the best one is kept by the manager)
                if res.stop_signal and self.step < t.steps and not stop_early:
                    return self._preempted(res.stop_signal)
            if stop_early:
                self._early_stopped()
            if self.progress.last_val:
                metrics = {k: self.progress.last_val.get(k, float("nan")) for k in ("psnr", "ssim")}
                self.log.hparams(self.cfg, metrics)
            return 0
        finally:
            self.log.close()

    def phase(self) -> str:
        return "pretrain" if self.step < self.cfg.train.pretrain_steps else "gan"

    def train_step(self, phase: str) -> StepResult:
        """One optimiser step (public so benchmarks time exactly what training runs)."""
        opts = self._phase_opts[phase]
        if self.step + 1 in self.poisoned_steps:
            opts = replace(opts, poison=True)
        signum = self.stop.request.signum if self.stop.request is not None else 0
        res = optimizer_step(self.backend, self.terms, lambda: next(self.stream), opts, stop_signal=signum)
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        return res

    def _after_step(self, phase: str, res: StepResult) -> None:
        self.reporter.add(res, self.cfg.data.batch_size)
        if res.skipped:  # a non-finite loss on some rank: the step was dropped everywhere
            streak = self.progress.skipped()
            self.log.console(f"step {self.step}: non-finite loss, step skipped ({streak} in a row)")
            self.log.record("skip", self.step, {"phase": phase, "consecutive": streak})
            self.progress.check_streak(self.cfg.train.max_bad_steps)
            return
        self.progress.trained()
        if self.ema is not None:
            self.ema.update(self.backend.module("g"))

    def _patience_spent(self) -> bool:
        """Early stopping is due before ``train.steps`` (patience validations in a row without a gain)."""
        t = self.cfg.train
        return self.step < t.steps and self.progress.patience_exhausted(t.early_stop_patience)

    def _early_stopped(self) -> None:
        """Say (console and a metrics record) that patience ran out, where the best val PSNR was."""
        t, p = self.cfg.train, self.progress
        at = f"step {p.best_step}" if p.best_step else "an earlier step"
        self.log.console(
            f"early stop at step {self.step}: best val PSNR {p.best_psnr:.3f} dB at {at} (no gain > "
            f"{t.early_stop_min_delta:g} dB in {p.stale_validations} validation(s); "
            f"train.early_stop_patience={t.early_stop_patience})"
        )
        self.log.record(
            "early_stop",
            self.step,
            {
                "best_psnr": p.best_psnr,
                "best_step": p.best_step,
                "stale_validations": p.stale_validations,
                "patience": t.early_stop_patience,
                "min_delta": t.early_stop_min_delta,
            },
        )

    def _preempted(self, signum: int) -> int:
        reason = signal.Signals(signum).name
        self.log.console(f"stop requested ({reason}) at step {self.step}: saving and exiting for requeue")
        if not self.checkpointer.saved_at(self.step):
            self.save()
        self.log.record("stop", self.step, {"reason": reason})
        requeue_self(self.cfg.slurm.max_requeues, self.stop)
        return REQUEUE_EXIT_CODE

    # ------------------------------------------------------------------------------------------- components
    def validate(self) -> dict[str, Any]:
        """Validate G (its EMA when enabled) now; the validator logs, the progress keeps the best PSNR."""
        model = self.ema.module if self.ema is not None else self.backend.module("g")
        metrics = self.validator.run(self.step, model, self.backend.autocast)
        self.progress.validated(metrics, self.cfg.train.early_stop_min_delta)
        return metrics

    def save(self) -> Path:
        """Checkpoint the run now (collective: every rank calls it)."""
        path = self.checkpointer.save(self.progress, self.backend, self.ema, self.stream)
        self.log.record("checkpoint", self.step, {"path": str(path)})
        return path
