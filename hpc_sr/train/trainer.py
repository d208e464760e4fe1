"""One iteration-based loop: phase 1 trains G with the pixel loss (SRResNet), phase 2 the GAN (G and D).

The loop only talks to the back-end interface (hpc_sr.train.backends), so DDP and DeepSpeed share it.
Per optimiser step: ``grad_accum`` micro-batches through G (D frozen and called through its raw module),
then ``n_d`` discriminator updates on the same micro-batches, EMA update, logging, validation, checkpoint.
A signal (SIGUSR2/SIGTERM) only sets a flag; at the next step boundary all ranks agree, save and return
REQUEUE_EXIT_CODE.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpc_sr.config import Config, config_to_dict, save_config
from hpc_sr.errors import CheckpointError, TrainingError
from hpc_sr.eval.metrics import MetricAccumulator, bicubic_upscale
from hpc_sr.models import losses
from hpc_sr.models.srgan import Discriminator, Generator
from hpc_sr.train import distributed as du
from hpc_sr.train.backends import make_backend
from hpc_sr.train.checkpoint import CheckpointManager, check_model_config, load_generator_payload
from hpc_sr.train.data import make_train_stream, make_val_loader
from hpc_sr.train.distributed import DistEnv
from hpc_sr.train.ema import ModelEMA
from hpc_sr.train.logger import RunLogger, format_eta, peak_memory_mb
from hpc_sr.train.schedule import lr_at
from hpc_sr.train.signals import REQUEUE_EXIT_CODE, install_stop_flag, requeue_self

FAULT_NAN_STEPS = "HPC_SR_FAULT_NAN_STEPS"  # test hook: comma-separated steps whose G loss is made NaN


def micro_batch_size(cfg: Config, world_size: int) -> int:
    """Per-rank micro-batch; the global batch must split evenly over ranks and accumulation steps."""
    parts = world_size * cfg.train.grad_accum
    if cfg.data.batch_size % parts:
        raise TrainingError(
            f"data.batch_size={cfg.data.batch_size} is not divisible by world size {world_size} x "
            f"train.grad_accum={cfg.train.grad_accum}"
        )
    return cfg.data.batch_size // parts


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
    """Load G's weights (EMA when present) from ``train.init_g``; the model config must match."""
    payload = load_generator_payload(source, ema=True)
    saved_d = {k: v for k, v in payload["model"].items() if k.startswith("d_")}  # D is not part of G
    check_model_config(
        {"config": {"model": payload["model"], "data": {"scale": payload["scale"]}}},
        replace(cfg.model, **saved_d),
        cfg.data.scale,
        Path(source),
    )
    generator.load_state_dict(payload["state_dict"])


class Trainer:
    """Builds models, back-end, data and logging from a Config; :meth:`run` trains to ``train.steps``."""

    def __init__(self, cfg: Config, env: DistEnv, device: torch.device, resume: str = "auto") -> None:
        self.cfg, self.env, self.device = cfg, env, device
        t = cfg.train
        self.run_dir = cfg.run_dir
        if env.is_main:
            check_writable(self.run_dir)
            save_config(cfg, self.run_dir / "config.yaml")
        du.barrier()
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        du.seed_everything(t.seed + env.rank)
        self.micro = micro_batch_size(cfg, env.world_size)
        self.gan = t.steps > t.pretrain_steps
        self.scale = cfg.data.scale

        self.backend = make_backend(cfg, device, env.world_size)
        generator = Generator.from_config(cfg.model, self.scale)
        if t.init_g:
            init_generator(generator, t.init_g, cfg)
        self.backend.add("g", generator, t.lr_g)
        if self.gan:
            self.backend.add("d", Discriminator.from_config(cfg.model), t.lr_d)
        self.ema = ModelEMA(self.backend.module("g"), t.ema_decay) if t.ema_decay > 0 else None

        self.stream = make_train_stream(cfg, env, device, self.micro)
        self.val_loader = make_val_loader(cfg, env, batch_size=max(1, min(16, self.micro)))
        self.ckpt = CheckpointManager(self.run_dir, keep_last=t.keep_last, rank=env.rank)
        self.log = RunLogger(cfg, self.run_dir, env.rank, env.world_size)
        self.stop = install_stop_flag()  # shared with a launcher that installed it earlier

        self.step = 0
        self.bad_steps = 0
        self.skipped_total = 0
        self.best_psnr = float("-inf")
        self.last_val: dict[str, Any] = {}
        self.fault_steps = {int(s) for s in os.environ.get(FAULT_NAN_STEPS, "").split(",") if s.strip()}
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
                f"dist.backend={self.backend.name}; export its generator with "
                f"tools/checkpoints.py and start from train.init_g"
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
            du.set_rng_state(rank_state["rng"])
            self.stream.load_state_dict(rank_state["stream"])
        else:
            self._load_stream_other_world(state)
        self.log.record("start", self.step, {"resumed_from": str(path)})
        self.log.console(f"resumed from {path} at step {self.step}")
        return path

    def _load_stream_other_world(self, state: dict[str, Any]) -> None:
        """Different world size: continue the saved epoch at the same global sample offset."""
        data = state.get("data") or {}
        if "position" not in data:
            return
        consumed = int(data["position"]) * int(data["micro_batch"]) * int(data["world_size"])
        position = consumed // (self.micro * self.env.world_size)
        self.stream.load_state_dict({"epoch": data["epoch"], "position": position})

    # ------------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        """Train to ``train.steps``; returns 0, or REQUEUE_EXIT_CODE after a signal-triggered save."""
        t = self.cfg.train
        total = t.steps
        window_start, window_images, window_data = time.perf_counter(), 0, 0.0
        sums: dict[str, float] = {}
        n_sums = 0
        try:
            while self.step < total:
                signum = self._agreed_stop_signal()
                if signum:
                    return self._preempted(signum)
                phase = "pretrain" if self.step < t.pretrain_steps else "gan"
                self._set_lrs(phase)
                values, data_time = self._train_step(phase)
                self.step += 1
                window_images += self.cfg.data.batch_size if not values.get("skipped") else 0
                window_data += data_time
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_sums += 1
                if self.step % self.cfg.log.log_every == 0 or self.step == total:
                    elapsed = time.perf_counter() - window_start
                    self._log_train(
                        phase, {k: v / n_sums for k, v in sums.items()}, window_images, elapsed, window_data
                    )
                    window_start, window_images, window_data, sums, n_sums = (
                        time.perf_counter(),
                        0,
                        0.0,
                        {},
                        0,
                    )
                if self.val_loader is not None and (self.step % t.val_every == 0 or self.step == total):
                    self.validate()
                if self.step % t.ckpt_every == 0 or self.step == total:
                    self.save()
            if self.last_val:
                self.log.hparams(
                    self.cfg,
                    {
                        "psnr": self.last_val.get("psnr", float("nan")),
                        "ssim": self.last_val.get("ssim", float("nan")),
                    },
                )
            return 0
        finally:
            self.log.close()

    def _agreed_stop_signal(self) -> int:
        """The stop signal seen by any rank (0 when none), the same on every rank."""
        mine = self.stop.request.signum if self.stop.request is not None else 0
        t = torch.tensor([float(mine)], device=self.device)
        return int(du.all_reduce_(t, torch.distributed.ReduceOp.MAX).item())

    def _preempted(self, signum: int) -> int:
        reason = signal.Signals(signum).name
        self.log.console(f"stop requested ({reason}) at step {self.step}: saving and exiting for requeue")
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

    # ------------------------------------------------------------------------------------------- one step
    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        t0 = time.perf_counter()
        lr, hr = next(self.stream)
        if self.cfg.train.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        return lr, hr, time.perf_counter() - t0

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        return not du.any_rank(not bool(torch.isfinite(loss.detach()).all()), self.device)

    def _train_step(self, phase: str) -> tuple[dict[str, float], float]:
        t, b = self.cfg.train, self.backend
        gan = phase == "gan"
        batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        totals: dict[str, float] = {}
        data_time = 0.0
        d_raw = b.module("d") if gan else None
        # ---- generator
        for micro in range(t.grad_accum):
            lr, hr, dt = self._next_batch()
            data_time += dt
            last = micro == t.grad_accum - 1
            with b.accumulate("g", last):
                with b.autocast():
                    sr = b.model("g")(lr)
                    parts = self._generator_losses(sr, hr, d_raw)
                loss = sum(parts.values())
                if self.step + 1 in self.fault_steps:
                    loss = loss * float("nan")
                if not self._finite_everywhere(loss):
                    return self._skip(phase), data_time
                b.backward("g", loss, last)
            for k, v in parts.items():
                totals[f"loss_g_{k}"] = totals.get(f"loss_g_{k}", 0.0) + float(v.detach()) / t.grad_accum
            batches.append((lr, hr, sr.detach()))
        totals["grad_norm_g"] = b.step("g")
        b.zero_grad("g")
        # ---- discriminator (on the same micro-batches, fakes detached)
        if gan:
            for _ in range(t.n_d):
                for micro, (_lr, hr, fake) in enumerate(batches):
                    last = micro == len(batches) - 1
                    with b.accumulate("d", last):
                        with b.autocast():
                            d = b.model("d")
                            loss_d = losses.discriminator_loss(d(hr).float(), d(fake).float(), t.adv_loss)
                        if not self._finite_everywhere(loss_d):
                            return self._skip(phase), data_time
                        b.backward("d", loss_d, last)
                    totals["loss_d"] = totals.get("loss_d", 0.0) + float(loss_d.detach()) / (
                        len(batches) * t.n_d
                    )
                totals["grad_norm_d"] = b.step("d")
                b.zero_grad("d")
        if self.ema is not None:
            self.ema.update(b.module("g"))
        self.bad_steps = 0
        return totals, data_time

    def _generator_losses(
        self, sr: torch.Tensor, hr: torch.Tensor, d_raw: nn.Module | None
    ) -> dict[str, Any]:
        t = self.cfg.train
        sr32 = sr.float()
        parts: dict[str, Any] = {"pixel": t.pixel_weight * losses.pixel_loss(sr32, hr, t.pixel_loss)}
        if t.flux_weight > 0:
            parts["flux"] = t.flux_weight * losses.flux_loss(sr32, hr)
        if t.ssim_weight > 0:
            parts["ssim"] = t.ssim_weight * losses.ssim_loss(sr32, hr)
        if d_raw is not None:
            d_raw.requires_grad_(False)  # D frozen in the G step; called without its DDP/engine wrapper
            try:
                fake_logits, fake_feats = d_raw.forward_features(sr)
                with torch.no_grad():
                    real_logits, real_feats = d_raw.forward_features(hr)
            finally:
                d_raw.requires_grad_(True)
            parts["adv"] = t.adv_weight * losses.generator_adversarial_loss(
                real_logits.float(), fake_logits.float(), t.adv_loss
            )
            if t.feature_weight > 0:
                parts["feature"] = t.feature_weight * losses.feature_matching_loss(
                    [f.float() for f in real_feats], [f.float() for f in fake_feats]
                )
        return parts

    def _skip(self, phase: str) -> dict[str, float]:
        """A non-finite loss on any rank: drop this step's gradients everywhere and count it."""
        for name in self.backend.names():
            self.backend.zero_grad(name)
        self.bad_steps += 1
        self.skipped_total += 1
        step = self.step + 1
        self.log.console(f"step {step}: non-finite loss, step skipped ({self.bad_steps} in a row)")
        self.log.record("skip", step, {"phase": phase, "consecutive": self.bad_steps})
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            raise TrainingError(
                f"{self.bad_steps} consecutive non-finite losses (train.max_bad_steps="
                f"{self.cfg.train.max_bad_steps}); last at step {step}"
            )
        return {"skipped": 1.0}

    # ------------------------------------------------------------------------------------------- logging
    def _log_train(
        self, phase: str, means: dict[str, float], images: int, elapsed: float, data_time: float
    ) -> None:
        t = self.cfg.train
        ips = images / elapsed if elapsed > 0 else float("nan")
        steps_per_s = self.cfg.log.log_every / elapsed if elapsed > 0 else float("nan")
        eta = (t.steps - self.step) / steps_per_s if steps_per_s > 0 else float("nan")
        values = {
            **means,
            "phase": phase,
            "images_per_s": ips,
            "data_wait_share": data_time / max(elapsed, 1e-9),
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
            f"step {self.step}/{t.steps} [{phase}] {losses_txt} | {ips:.1f} img/s | "
            f"data {values['data_wait_share']:.0%} | eta {format_eta(eta)}"
        )

    # ------------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Model (EMA when enabled) and bicubic metrics on the val split, reduced exactly over ranks."""
        model = self.ema.module if self.ema is not None else self.backend.module("g")
        was_training = model.training
        model.eval()
        acc_model, acc_bic = MetricAccumulator(), MetricAccumulator()
        grid_batch = None
        for lr, hr in self.val_loader or []:
            lr, hr = lr.to(self.device), hr.to(self.device)
            with self.backend.autocast():
                sr = model(lr).float()
            acc_model.update(sr, hr)
            acc_bic.update(bicubic_upscale(lr, self.scale), hr)
            if grid_batch is None:
                grid_batch = (lr[:4].cpu(), sr[:4].cpu(), hr[:4].cpu())
        model.train(was_training)
        for acc in (acc_model, acc_bic):
            state = acc.state().to(self.device)
            du.all_reduce_(state)
            acc.load_state(state.cpu())
        m, bic = acc_model.compute(), acc_bic.compute()
        self.last_val = m
        self.best_psnr = max(self.best_psnr, m["psnr"])
        self.log.record("val", self.step, {"model": m, "bicubic": bic})
        self.log.scalars("val", self.step, m)
        self.log.scalars("val_bicubic", self.step, bic)
        self.log.scalars("val_gain", self.step, {"psnr_db": m["psnr"] - bic["psnr"]})
        self.log.console(
            f"val step {self.step}: PSNR {m['psnr']:.3f} dB (pooled {m['psnr_pooled']:.3f}) "
            f"SSIM {m['ssim']:.4f} | bicubic {bic['psnr']:.3f} dB SSIM {bic['ssim']:.4f} | "
            f"gain {m['psnr'] - bic['psnr']:+.3f} dB"
        )
        if (
            grid_batch is not None
            and self.env.is_main
            and self.cfg.log.image_every > 0
            and (self.step % self.cfg.log.image_every == 0 or self.step == self.cfg.train.steps)
        ):
            from hpc_sr.eval.pictures import comparison_grid

            self.log.image("val/comparison", self.step, comparison_grid(*grid_batch, scale=self.scale))
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
        rank_state = {"rng": du.rng_state(), "stream": data_state}
        meta = {
            "phase": phase,
            "world_size": self.env.world_size,
            "backend": self.backend.name,
            "val": {k: v for k, v in self.last_val.items() if isinstance(v, int | float)},
            "model": asdict(self.cfg.model),
            "scale": self.scale,
        }
        path = self.ckpt.save(self.step, self.backend, trainer_state, rank_state, meta, self.device)
        self.log.record("checkpoint", self.step, {"path": str(path)})
        return path
