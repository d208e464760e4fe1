"""Validation during training: the sharded evaluation loop on the val split, with the physics metrics, bicubic
beside, and comparison pictures; it decides when it is due.

    validator = Validator(loader, scale=2, device=device, is_main=env.is_main, log=logger, every=500,
                          image_every=500, last_step=1000)
    if validator.due(step):
        metrics = validator.run(step, model, autocast)   # model metrics (EMA when the caller passes it)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from hpc_sr.eval.loop import evaluate_batches, reduce_accumulator
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.eval.physics import PhysicsAccumulator, omit_metric
from hpc_sr.train.logger import RunLogger
from hpc_sr.train.progress import due


class Validator:
    """Model and bicubic metrics on the val split, reduced exactly over ranks, logged at its own cadence."""

    def __init__(
        self,
        loader: Iterable[tuple[Tensor, Tensor]] | None,
        *,
        scale: int,
        device: torch.device,
        is_main: bool,
        log: RunLogger,
        every: int,
        image_every: int,
        last_step: int,
        lr_is_mean: bool = True,
    ) -> None:
        self.loader, self.scale, self.device, self.is_main, self.log = loader, scale, device, is_main, log
        self.every, self.image_every, self.last_step = every, image_every, last_step
        # lr_residual measures |avg_pool(SR) - LR|: meaningless where LR is not the block mean of HR (two
        # instruments, hpc_sr.data.lr_relation), so it is left out of the logs there
        self.lr_is_mean = lr_is_mean

    def due(self, step: int) -> bool:
        return self.loader is not None and due(step, self.every, self.last_step)

    @torch.no_grad()
    def run(
        self, step: int, model: nn.Module, autocast: Callable[[], AbstractContextManager[Any]]
    ) -> dict[str, Any]:
        """Evaluate ``model`` on this rank's share of the split; returns the model's metrics (all ranks)."""
        was_training = model.training
        model.eval()

        def predict(lr: Tensor) -> Tensor:
            with autocast():
                return model(lr)

        physics = {"model": PhysicsAccumulator(self.scale), "bicubic": PhysicsAccumulator(self.scale)}

        def on_batch(lr: Tensor, sr: Tensor, hr: Tensor) -> None:
            physics["model"].update(sr, hr, lr)
            physics["bicubic"].update(bicubic_upscale(lr, self.scale), hr, lr)

        try:
            res = evaluate_batches(predict, self.loader or [], self.scale, self.device, on_batch=on_batch)
            for acc in physics.values():
                reduce_accumulator(acc, self.device)
        finally:
            model.train(was_training)
        phys = {k: acc.compute() for k, acc in physics.items()}
        if not self.lr_is_mean:
            phys = omit_metric(phys, "lr_residual")
        m, bic = res.model, res.bicubic
        self.log.record("val", step, {"model": m, "bicubic": bic, "physics": phys})
        self.log.scalars("val_physics", step, phys["model"])
        self.log.scalars("val_physics_bicubic", step, phys["bicubic"])
        self.log.scalars("val", step, m)
        self.log.scalars("val_bicubic", step, bic)
        self.log.scalars("val_gain", step, {"psnr_db": res.gain_db})
        self.log.console(
            f"val step {step}: PSNR {m['psnr']:.3f} dB (pooled {m['psnr_pooled']:.3f}) "
            f"SSIM {m['ssim']:.4f} | bicubic {bic['psnr']:.3f} dB SSIM {bic['ssim']:.4f} | "
            f"gain {res.gain_db:+.3f} dB"
        )
        if res.first is not None and self.is_main and self.image_every > 0 and due(
            step, self.image_every, self.last_step
        ):
            from hpc_sr.eval.pictures import comparison_grid

            self.log.image("val/comparison", step, comparison_grid(*res.first, scale=self.scale))
        self.log.flush()
        return m
