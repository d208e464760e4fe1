"""The training loop: phase 1 trains G with its pixel-type terms (SRResNet-style), phase 2 the GAN (G and D).

    Trainer(cfg, env, device).run()     # 0 when done, REQUEUE_EXIT_CODE after a signal-triggered save

Each iteration reads as: learning rates (pure functions of the step) -> one optimiser step
(:func:`hpc_sr.train.step.optimizer_step`) -> EMA -> log -> validate -> checkpoint -> stop if any rank was
signalled. The loop talks only to the back-end interface (DDP or DeepSpeed) and to components built from the
config (hpc_sr.train.components).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpc_sr.config import Config, config_to_dict, save_config
from hpc_sr.data.streams import make_train_stream, make_val_loader
from hpc_sr.dist import collectives
from hpc_sr.dist.env import DistEnv
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE, install_stop_flag, requeue_self
from hpc_sr.errors import CheckpointError, TrainingError
from hpc_sr.eval.loop import evaluate_batches, reduce_accumulator
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.eval.physics import PhysicsAccumulator
from hpc_sr.train import faults, rng
from hpc_sr.train.backends import make_backend
from hpc_sr.train.checkpoint import (
    CheckpointManager,
    check_model_config,
    load_generator_payload,
    resolved_model,
    step_dirname,
)
from hpc_sr.train.components import (
    build_discriminator,
    build_generator,
    build_loss_terms,
    check_config,
    samples_per_input,
)
from hpc_sr.train.ema import ModelEMA
from hpc_sr.train.logger import RunLogger, peak_memory_mb
from hpc_sr.train.meter import StepMeter, format_eta
from hpc_sr.train.schedule import lr_at
from hpc_sr.train.step import StepOptions, StepResult, optimizer_step


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


def init_generator(generator: nn.Module, source: str, cfg: Config) -> None:
    """Load G's weights (EMA when present) from ``train.init_g``; the generator config must match.

    A deterministic source may start a stochastic generator of the same arch and options (``model.g
    .noise_channels`` K > 0): the first layer's weights for the K noise inputs start at zero, so the new
    generator begins as the source, every sample alike, and training grows the spread.
    """
    payload = load_generator_payload(source, ema=True)
    saved_g = dict(payload.get("generator") or resolved_model(payload["model"])["g"])
    state = payload["state_dict"]
    want = cfg.model.g.noise_channels
    if int(saved_g.get("noise_channels", 0)) == 0 and want > 0:
        saved_g["noise_channels"] = want
        saved_g["noise_centred"] = cfg.model.g.noise_centred
        state = with_noise_inputs(state, generator.state_dict(), want, Path(source))
    check_model_config(
        {"config": {"model": {"g": saved_g}, "data": {"scale": payload["scale"]}}},
        cfg.model,
        cfg.data.scale,
        Path(source),
        generator_only=True,
    )
    generator.load_state_dict(state)


def with_noise_inputs(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], noise: int, source: Path
) -> dict[str, torch.Tensor]:
    """``state`` of a deterministic generator for a stochastic one: every weight whose input-channel dim is
    ``noise`` short of the target's gets zero columns for the noise inputs (the first layer)."""
    out, grown = dict(state), []
    for key, w in state.items():
        t = target.get(key)
        if t is not None and w.ndim >= 2 and t.shape[1] == w.shape[1] + noise and t.shape[2:] == w.shape[2:]:
            pad = torch.zeros((w.shape[0], noise, *w.shape[2:]), dtype=w.dtype)
            out[key] = torch.cat([w, pad], dim=1)
            grown.append(key)
    if len(grown) != 1:
        raise CheckpointError(
            f"{source}: cannot start a stochastic generator from it: expected one first layer to take the "
            f"{noise} noise input(s), found {grown or 'none'}"
        )
    return out


class Trainer:
    """Builds models, back-end, data and logging from a Config; :meth:`run` trains to ``train.steps``."""

    def __init__(self, cfg: Config, env: DistEnv, device: torch.device, resume: str = "auto") -> None:
        check_config(cfg)
        self.cfg, self.env, self.device = cfg, env, device
        t = cfg.train
        self.run_dir = cfg.run_dir
        if env.is_main:
            check_writable(self.run_dir)
            save_config(cfg, self.run_dir / "config.yaml")
        collectives.barrier()
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        self.micro = micro_batch_size(cfg.data.batch_size, t.grad_accum, env.world_size)
        self.gan = t.steps > t.pretrain_steps
        self.scale = cfg.data.scale

        self.backend = make_backend(cfg, device, env.world_size)
        # every rank builds the same models: parameters AND buffers (spectral-norm vectors, which DeepSpeed
        # does not broadcast)
        rng.seed_everything(t.seed)
        generator = build_generator(cfg.model, self.scale)
        if t.init_g:
            init_generator(generator, t.init_g, cfg)
        discriminator = build_discriminator(cfg.model) if self.gan else None
        rng.seed_everything(t.seed + env.rank)  # then each rank its own stream
        self.backend.add("g", generator, t.lr_g)
        if discriminator is not None:
            self.backend.add("d", discriminator, t.lr_d)
        self.ema = ModelEMA(self.backend.module("g"), t.ema_decay) if t.ema_decay > 0 else None
        self.terms, adv_kind = build_loss_terms(cfg)
        self.step_opts = StepOptions(
            grad_accum=t.grad_accum,
            n_d=t.n_d,
            adversarial_kind=adv_kind,
            channels_last=t.channels_last,
            samples_per_input=samples_per_input(cfg),
            antithetic_noise=cfg.model.g.noise_channels if cfg.model.g.noise_centred else 0,
        )

        self.stream = make_train_stream(cfg.data, t.seed, env, device, self.micro)
        self.val_loader = make_val_loader(cfg.data, t.seed, env, batch_size=max(1, min(16, self.micro)))
        self.ckpt = CheckpointManager(self.run_dir, keep_last=t.keep_last, rank=env.rank)
        self.log = RunLogger(cfg.log, self.run_dir, env.rank, env.world_size)
        self.stop = install_stop_flag()  # shared with a launcher that installed it earlier
        self.meter = StepMeter()

        self.step = 0
        self.bad_steps = 0
        self.skipped_total = 0
        self.best_psnr = float("-inf")
        self.last_val: dict[str, Any] = {}
        self.lrs: dict[str, float] = {}
        self.poisoned_steps = faults.nan_steps()
        self.step_sleep_s = faults.step_sleep_s()
        self.resumed_from = self._resume(resume)

    # ------------------------------------------------------------------------------------------- resume
    def _resume(self, resume: str) -> Path | None:
        path = self.ckpt.resolve(resume)
        if path is None:
            self.log.record("start", 0, {"resumed_from": None})
            return None
        state = self.ckpt.load(path)
        if state.get("backend", "ddp") != self.backend.name:
            raise CheckpointError(
                f"{path}: a {state.get('backend')} checkpoint cannot resume with "
                f"dist.backend={self.backend.name}; export its generator (hpc-sr ckpt export) and start from "
                f"train.init_g"
            )
        check_model_config(state, self.cfg.model, self.scale, path)
        self.backend.load(path, state["backend_state"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.best_psnr = float(state.get("best_psnr", float("-inf")))
        rank_state = self.ckpt.load_rank_state(path)
        same_world = int(state.get("world_size", 1)) == self.env.world_size
        if rank_state is not None and same_world:
            rng.set_rng_state(rank_state["rng"])
            self.stream.load_state_dict(rank_state["stream"])
        elif (state.get("data") or {}).get("position") is not None and hasattr(
            self.stream, "load_global_offset"
        ):
            self.stream.load_global_offset(state["data"], self.env.world_size)
        self.log.record("start", self.step, {"resumed_from": str(path)})
        self.log.console(f"resumed from {path} at step {self.step}")
        return path

    # ------------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        """Train to ``train.steps``; returns 0, or REQUEUE_EXIT_CODE after a signal-triggered save."""
        t = self.cfg.train
        try:
            while self.step < t.steps:
                phase = self.phase()
                self._set_lrs(phase)
                res = self.train_step(phase)
                self.step += 1
                self._after_step(phase, res)
                if self.step % self.cfg.log.log_every == 0 or self.step == t.steps:
                    self._log_train(phase)
                if self.val_loader is not None and (self.step % t.val_every == 0 or self.step == t.steps):
                    self.validate()
                if self.step % t.ckpt_every == 0 or self.step == t.steps:
                    self.save()
                if res.stop_signal and self.step < t.steps:
                    return self._preempted(res.stop_signal)
            if self.last_val:
                metrics = {k: self.last_val.get(k, float("nan")) for k in ("psnr", "ssim")}
                self.log.hparams(self.cfg, metrics)
            return 0
        finally:
            self.log.close()

    def phase(self) -> str:
        return "pretrain" if self.step < self.cfg.train.pretrain_steps else "gan"

    def train_step(self, phase: str) -> StepResult:
        """One optimiser step (public so benchmarks time exactly what training runs)."""
        opts = self.step_opts
        opts.gan = phase == "gan"
        opts.poison = self.step + 1 in self.poisoned_steps
        signum = self.stop.request.signum if self.stop.request is not None else 0
        res = optimizer_step(self.backend, self.terms, lambda: next(self.stream), opts, stop_signal=signum)
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        return res

    def _after_step(self, phase: str, res: StepResult) -> None:
        if res.skipped:
            self._skipped(phase)
            self.meter.add({}, 0, res.data_time)
            return
        self.bad_steps = 0
        if self.ema is not None:
            self.ema.update(self.backend.module("g"))
        values: dict[str, Any] = dict(res.losses)
        values.update({f"grad_norm_{k}": v for k, v in res.grad_norms.items()})
        self.meter.add(values, self.cfg.data.batch_size, res.data_time)

    def _preempted(self, signum: int) -> int:
        reason = signal.Signals(signum).name
        self.log.console(f"stop requested ({reason}) at step {self.step}: saving and exiting for requeue")
        latest = self.ckpt.latest()
        if latest is None or latest.name != step_dirname(self.step):  # not saved at this step already
            self.save()
        self.log.record("stop", self.step, {"reason": reason})
        requeue_self(self.cfg.slurm.max_requeues, self.stop)
        return REQUEUE_EXIT_CODE

    def _set_lrs(self, phase: str) -> None:
        t = self.cfg.train
        if phase == "pretrain":
            step, total = self.step, t.pretrain_steps
        else:
            step, total = self.step - t.pretrain_steps, t.steps - t.pretrain_steps
        self.lrs = {"g": lr_at(step, t.lr_g, total, t.warmup_steps, t.schedule, t.min_lr_ratio)}
        if self.gan:
            self.lrs["d"] = lr_at(step, t.lr_d, total, t.warmup_steps, t.schedule, t.min_lr_ratio)
        for name, lr in self.lrs.items():
            self.backend.set_lr(name, lr)

    def _skipped(self, phase: str) -> None:
        """A non-finite loss on some rank: the step was dropped everywhere; K in a row stop the run."""
        self.bad_steps += 1
        self.skipped_total += 1
        self.log.console(f"step {self.step}: non-finite loss, step skipped ({self.bad_steps} in a row)")
        self.log.record("skip", self.step, {"phase": phase, "consecutive": self.bad_steps})
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            raise TrainingError(
                f"{self.bad_steps} consecutive non-finite losses (train.max_bad_steps="
                f"{self.cfg.train.max_bad_steps}); last at step {self.step}"
            )

    # ------------------------------------------------------------------------------------------- logging
    def _log_train(self, phase: str) -> None:
        means = self.meter.means()
        rates = self.meter.rates(self.cfg.train.steps - self.step)
        self.meter.reset()
        values = {
            **means,
            "phase": phase,
            "images_per_s": rates["images_per_s"],
            "data_wait_share": rates["data_wait_share"],
            "peak_mem_mb": peak_memory_mb(self.device),
            "skipped_total": self.skipped_total,
            **{f"lr_{k}": v for k, v in self.lrs.items()},
        }
        self.log.record("train", self.step, values)
        self.log.scalars("train", self.step, {k: v for k, v in values.items() if k != "phase"})
        losses_txt = " ".join(
            f"{k.removeprefix('loss_')} {v:.4g}" for k, v in means.items() if k.startswith("loss")
        )
        self.log.console(
            f"step {self.step}/{self.cfg.train.steps} [{phase}] {losses_txt} | "
            f"{rates['images_per_s']:.1f} img/s"
            f" | data {rates['data_wait_share']:.0%} | eta {format_eta(rates['eta_s'])}"
        )

    # ------------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Model (EMA when enabled) and bicubic metrics on the val split, reduced exactly over ranks."""
        model = self.ema.module if self.ema is not None else self.backend.module("g")
        was_training = model.training
        model.eval()

        def predict(lr: torch.Tensor) -> torch.Tensor:
            with self.backend.autocast():
                return model(lr)

        physics = {"model": PhysicsAccumulator(self.scale), "bicubic": PhysicsAccumulator(self.scale)}

        def on_batch(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> None:
            physics["model"].update(sr, hr, lr)
            physics["bicubic"].update(bicubic_upscale(lr, self.scale), hr, lr)

        res = evaluate_batches(predict, self.val_loader or [], self.scale, self.device, on_batch=on_batch)
        for acc in physics.values():
            reduce_accumulator(acc, self.device)
        phys = {k: acc.compute() for k, acc in physics.items()}
        model.train(was_training)
        m, bic = res.model, res.bicubic
        self.last_val = m
        self.best_psnr = max(self.best_psnr, m["psnr"])
        self.log.record("val", self.step, {"model": m, "bicubic": bic, "physics": phys})
        self.log.scalars("val_physics", self.step, phys["model"])
        self.log.scalars("val_physics_bicubic", self.step, phys["bicubic"])
        self.log.scalars("val", self.step, m)
        self.log.scalars("val_bicubic", self.step, bic)
        self.log.scalars("val_gain", self.step, {"psnr_db": res.gain_db})
        self.log.console(
            f"val step {self.step}: PSNR {m['psnr']:.3f} dB (pooled {m['psnr_pooled']:.3f}) "
            f"SSIM {m['ssim']:.4f} | bicubic {bic['psnr']:.3f} dB SSIM {bic['ssim']:.4f} | "
            f"gain {res.gain_db:+.3f} dB"
        )
        every = self.cfg.log.image_every
        due = every > 0 and (self.step % every == 0 or self.step == self.cfg.train.steps)
        if res.first is not None and self.env.is_main and due:
            from hpc_sr.eval.pictures import comparison_grid

            self.log.image("val/comparison", self.step, comparison_grid(*res.first, scale=self.scale))
        self.log.flush()
        return m

    # ------------------------------------------------------------------------------------------- checkpoint
    def save(self) -> Path:
        phase = "pretrain" if self.step <= self.cfg.train.pretrain_steps else "gan"
        data_state = self.stream.state_dict()
        trainer_state = {
            "step": self.step,
            "phase": phase,
            "config": config_to_dict(self.cfg),
            "world_size": self.env.world_size,
            "backend": self.backend.name,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "bad_steps": self.bad_steps,
            "best_psnr": self.best_psnr,
            "data": {**data_state, "micro_batch": self.micro, "world_size": self.env.world_size}
            if "position" in data_state
            else {},
        }
        rank_state = {"rng": rng.rng_state(), "stream": data_state}
        meta = {
            "phase": phase,
            "world_size": self.env.world_size,
            "backend": self.backend.name,
            "val": {k: v for k, v in self.last_val.items() if isinstance(v, int | float)},
            "model": resolved_model(self.cfg.model),
            "scale": self.scale,
        }
        path = self.ckpt.save(self.step, self.backend, trainer_state, rank_state, meta, self.device)
        self.log.record("checkpoint", self.step, {"path": str(path)})
        return path
