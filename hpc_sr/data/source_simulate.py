"""Training source ``simulate``: pairs rendered on the fly by the lensing simulator (``data.source:
simulate``).

The worked example of a data source in one file (docs/ARCHITECTURE.md): an options dataclass (the source's
``data.options``) and a class registered with ``@register_source`` that yields this rank's micro-batches and
saves/restores its position.

Renders the ``preset`` at ``hr_size`` on ``sim_device`` (``auto`` = the training device). With
``data.patch_size`` each sample gets its own random aligned window, and only that window (plus the PSF
margin) is rendered (:meth:`~hpc_sr.data.lensing.LensingSimulator.sample_windows`); then each sample's
flip/rotation (hpc_sr.data.augment), as the shard streams do. ``data.target: clean``: the target is each
window before its noise (same peak scaling), so the loss sees no HR noise. The torch generator's state is the
stream position (checkpointed per rank); ranks draw from different seeds. Validation uses its own simulated
set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from hpc_sr.config import DataConfig
from hpc_sr.data.augment import check_patch, crop_and_augment, draw
from hpc_sr.data.lr_blur import lr_blur_setting
from hpc_sr.data.streams import register_source
from hpc_sr.dist.env import DistEnv
from hpc_sr.imaging import with_lr_blur


@dataclass
class SimulateOptions:
    """``data.options`` of source ``simulate``."""

    preset: str = "deeplense_sr"  # simulator preset (hpc_sr.data.presets)
    hr_size: int = 150  # HR image side
    sim_device: str = "cpu"  # where batches are generated: "cpu", "cuda", "auto" = the training device


@register_source("simulate", SimulateOptions)
class SimulatedStream:
    """Endless per-rank micro-batches rendered by the lensing simulator (no DataLoader workers)."""

    def __init__(
        self,
        data: DataConfig,
        opts: SimulateOptions,
        seed: int,
        env: DistEnv,
        device: torch.device,
        micro_batch: int,
    ) -> None:
        from hpc_sr.data.lensing import LensingSimulator

        sim_device = device if opts.sim_device == "auto" else torch.device(opts.sim_device)
        self.sim = LensingSimulator(opts.preset, hr_size=opts.hr_size, scale=data.scale, device=sim_device)
        lr_size = opts.hr_size // data.scale
        check_patch(data.patch_size, (lr_size, lr_size), data.scale, f"the simulated {opts.preset!r} images")
        self.generator = torch.Generator(device=sim_device)
        self.generator.manual_seed(seed * 1_000_003 + env.rank)
        self.micro_batch, self.patch, self.scale, self.augment = (
            micro_batch,
            data.patch_size,
            data.scale,
            data.augment,
        )
        self.lr_hw = (lr_size, lr_size)
        self.clean = data.target == "clean"
        self.device = device
        self.lr_blur = lr_blur_setting(data.lr_blur)  # attach each pair's LR blur (model.g.lr_blur_input)

    @staticmethod
    def val_dataset(data: DataConfig, opts: SimulateOptions, seed: int) -> Dataset:
        """``data.val_images`` (64 when 0) whole simulated pairs from a seed of their own, on the CPU."""
        from hpc_sr.data.lensing import LensingSimulator

        sim = LensingSimulator(opts.preset, hr_size=opts.hr_size, scale=data.scale)
        batch = sim.sample(data.val_images or 64, generator=torch.Generator().manual_seed(seed + 987_654_321))
        setting = lr_blur_setting(data.lr_blur)
        lr = batch.lr if setting is None else with_lr_blur(batch.lr, _blur(sim, batch.params, setting))
        return TensorDataset(lr, batch.hr)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clean:  # the noise-free window as the target (whole images: a window of hr_size)
            side = self.patch or self.lr_hw[0]
            batch = self.sim.sample_windows(
                self.micro_batch, side * self.scale, generator=self.generator, keep_clean=True
            )
            d = draw(self.micro_batch, (side, side), 0, self.augment, self.generator)
            lr, hr = crop_and_augment(self._lr(batch), batch.clean, d, 0, self.scale)  # type: ignore[arg-type]
        elif self.patch:  # render each sample's own window only
            batch = self.sim.sample_windows(
                self.micro_batch, self.patch * self.scale, generator=self.generator
            )
            d = draw(self.micro_batch, (self.patch, self.patch), 0, self.augment, self.generator)
            lr, hr = crop_and_augment(self._lr(batch), batch.hr, d, 0, self.scale)
        else:
            full = self.sim.sample(self.micro_batch, generator=self.generator)
            d = draw(self.micro_batch, self.lr_hw, 0, self.augment, self.generator)
            lr, hr = crop_and_augment(self._lr(full), full.hr, d, 0, self.scale)
        return lr.to(self.device), hr.to(self.device)

    def _lr(self, batch: Any) -> torch.Tensor:
        """The batch's LR, with its LR-blur channel when ``data.lr_blur`` is set."""
        if self.lr_blur is None:
            return batch.lr
        return with_lr_blur(batch.lr, _blur(self.sim, batch.params, self.lr_blur))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def _blur(sim: Any, params: torch.Tensor, setting: str | float) -> torch.Tensor | float:
    """Each simulated pair's LR blur ("data": from its instrument parameters) or the one given value."""
    if isinstance(setting, str):
        from hpc_sr.data.lensing import lr_blur_pairs

        return lr_blur_pairs(params, sim.preset.pixel_scale, sim.scale)
    return setting
