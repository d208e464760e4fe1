"""Comparison grid rendering and the atomic PNG write."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpc_sr.eval.pictures import comparison_grid, save_comparison_png


def _batch(n: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(n, 1, size, size, generator=g)
    lr = F.avg_pool2d(hr, 2)
    sr = hr + 0.05 * torch.randn(hr.shape, generator=g)
    return lr, sr, hr


def _pixels_near(img: np.ndarray, cmap: str, value: float) -> int:
    rgb = np.array(matplotlib.colormaps[cmap](value)[:3]) * 255
    return int((np.abs(img.reshape(-1, 3).astype(float) - rgb).max(1) < 1.5).sum())


def test_comparison_grid_shape_rows_and_colours() -> None:
    lr, sr, hr = _batch(3)
    one = comparison_grid(lr, sr, hr, scale=2, max_rows=1)
    two = comparison_grid(lr, sr, hr, scale=2, max_rows=2)
    capped = comparison_grid(lr, sr, hr, scale=2, max_rows=10)  # more rows asked than images: 3 rows
    for img in (one, two, capped):
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[1] > 2 * img.shape[0] / 3  # five columns side by side
    assert one.shape[1] == two.shape[1] and two.shape[0] > one.shape[0]
    assert capped.shape[1] == one.shape[1] and capped.shape[0] > two.shape[0]
    # each row's shared scale reaches both ends of the image colour map; the residual uses its own map
    for cmap in ("inferno", "viridis"):
        for value in (0.0, 1.0):
            assert _pixels_near(two, cmap, value) >= 4, (cmap, value)


def test_grid_depends_on_sr() -> None:
    lr, sr, hr = _batch(1)
    assert not np.array_equal(comparison_grid(lr, sr, hr, 2), comparison_grid(lr, hr.clone(), hr, 2))


def test_tiny_images_x4() -> None:
    lr = torch.rand(1, 1, 3, 3)
    hr = torch.rand(1, 1, 12, 12)
    img = comparison_grid(lr, hr * 0.9, hr, scale=4)
    assert img.shape[2] == 3 and img.std() > 0


def test_mismatched_shapes_are_refused() -> None:
    lr, sr, hr = _batch(2)
    with pytest.raises(ValueError, match="scale=4"):
        comparison_grid(lr, sr, hr, scale=4)


def test_save_comparison_png(tmp_path: Path) -> None:
    lr, sr, hr = _batch(2)
    out = save_comparison_png(tmp_path / "sub" / "cmp.png", lr, sr, hr, scale=2, title="step 100")
    assert out == tmp_path / "sub" / "cmp.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = matplotlib.image.imread(out)
    grid = comparison_grid(lr, sr, hr, scale=2)
    assert decoded.shape[1] == grid.shape[1] and decoded.shape[0] > grid.shape[0]  # title adds height
    assert [p.name for p in out.parent.iterdir()] == ["cmp.png"]  # no temp file left
