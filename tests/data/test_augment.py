"""The one crop/augment transform: aligned LR/HR crops, the 8 flips/rotations, resident splits."""

from __future__ import annotations

import torch

from hpc_sr.data.augment import Draws, crop_and_augment, draw

CPU = torch.device("cpu")


def _reference(img: torch.Tensor, y: int, x: int, e: int, p: int) -> torch.Tensor:
    out = torch.rot90(img[..., y : y + p, x : x + p], e // 2, dims=(-2, -1))
    return out.flip(-1) if e % 2 else out


def test_crop_and_augment_matches_rot90_and_flip_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    lr, hr = torch.rand(16, 1, 10, 10, generator=g), torch.rand(16, 1, 20, 20, generator=g)
    d = draw(16, (10, 10), 4, True, g)
    assert len(set(d.e.tolist())) > 3  # transforms differ across the batch
    lr_p, hr_p = crop_and_augment(lr, hr, d, 4, 2)
    for i in range(16):
        y, x, e = int(d.y[i]), int(d.x[i]), int(d.e[i])
        assert torch.equal(lr_p[i], _reference(lr[i], y, x, e, 4))
        assert torch.equal(hr_p[i], _reference(hr[i], 2 * y, 2 * x, e, 8))


def test_crop_from_a_resident_split_by_index_and_multichannel() -> None:
    lr, hr = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 16, 16)
    d = Draws(torch.tensor([0, 4]), torch.tensor([3, 1]), torch.tensor([5, 2]))
    index = torch.tensor([4, 1])
    lr_p, hr_p = crop_and_augment(lr, hr, d, 4, 2, index=index)
    for j, i in enumerate(index.tolist()):
        assert torch.equal(lr_p[j], _reference(lr[i], int(d.y[j]), int(d.x[j]), int(d.e[j]), 4))
        assert torch.equal(hr_p[j], _reference(hr[i], 2 * int(d.y[j]), 2 * int(d.x[j]), int(d.e[j]), 8))
