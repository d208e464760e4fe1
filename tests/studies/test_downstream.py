"""The downstream study: lens targets, the dihedral rule for ellipticity (checked against the simulator), a
deterministic regressor that learns, the scores, gap_closed, and the command end to end."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_sr.data.lensing import PARAM_NAMES, simulate
from hpc_sr.data.presets import PRESETS
from hpc_sr.data.shards import load_manifest, pack_to_shards, read_split_params
from hpc_sr.data.truth import clean_images
from hpc_sr.errors import DataError, HpcSrError
from hpc_sr.studies import downstream
from hpc_sr.studies.common import parse_models
from hpc_sr.studies.downstream import (
    BICUBIC,
    ELLIPTICITY,
    HR,
    TARGETS,
    Regressor,
    bootstrap_gap_closed,
    bootstrap_rmse_difference,
    dihedral,
    downstream_targets,
    gap_closed,
    predict,
    score,
    squared_errors,
    train_regressor,
)
from hpc_sr.train.schedule import lr_at

P = {name: i for i, name in enumerate(PARAM_NAMES)}
# Wider pixels than deeplense_sr's 0.05": the Einstein ring (1.1-1.5") lies inside a 32 px frame.
EASY = dataclasses.replace(PRESETS["deeplense_sr"], name="easy", pixel_scale=0.1)


def transformed_params(p: torch.Tensor, code: int) -> torch.Tensor:
    """The simulator parameters of the image seen through dihedral ``code`` (x = columns, y = rows): transpose
    swaps x and y and negates every e1-like component; a row flip negates y, a column flip x, each negating
    every e2-like component (ellipticities and shear)."""
    q = p.clone()
    pairs = [("lens_x", "lens_y"), ("src_x", "src_y")]
    e1s, e2s = ("lens_e1", "gamma1", "src_e1", "ll_e1"), ("lens_e2", "gamma2", "src_e2", "ll_e2")
    if code & 1:
        for a, b in pairs:
            q[:, [P[a], P[b]]] = q[:, [P[b], P[a]]]
        for e in e1s:
            q[:, P[e]] *= -1
    for bit, axis in ((2, "y"), (4, "x")):
        if code & bit:
            for a, b in pairs:
                q[:, P[a if axis == "x" else b]] *= -1
            for e in e2s:
                q[:, P[e]] *= -1
    return q


def test_targets_pick_theta_e_and_lens_ellipticity() -> None:
    params = np.arange(2 * len(PARAM_NAMES), dtype=np.float64).reshape(2, -1)
    y = downstream_targets(params, PARAM_NAMES)
    assert y.dtype == torch.float64 and y.shape == (2, 3)
    assert y[1].tolist() == [params[1, P[t]] for t in TARGETS]
    with pytest.raises(DataError, match="lack \\['lens_e2'\\]"):
        downstream_targets(params[:, :2], ["theta_E", "lens_e1"])
    with pytest.raises(DataError, match="shape"):
        downstream_targets(params[:, :5], PARAM_NAMES)


@pytest.mark.parametrize("code", range(8))
def test_dihedral_is_the_image_of_transformed_parameters(code: int) -> None:
    """Flipping / rotating a noise-free render equals rendering the transformed parameters, and dihedral's
    target rule gives exactly their (theta_E, lens_e1, lens_e2)."""
    p = simulate(3, preset=EASY, seed=code, hr_size=32).params.double()
    img = clean_images(p, EASY, 32)
    q = transformed_params(p, code)
    codes = torch.full((3,), code)
    x, y = dihedral(img, downstream_targets(p, PARAM_NAMES), codes)
    want = clean_images(q, EASY, 32)
    assert float(want.amax()) > 0.5  # a real image, not an empty frame
    torch.testing.assert_close(x, want, atol=1e-9, rtol=0)
    torch.testing.assert_close(y, downstream_targets(q, PARAM_NAMES), atol=0, rtol=0)
    if code:
        assert not torch.equal(x, img)


def test_dihedral_wrong_signs_would_fail() -> None:
    """The check above discriminates: the transpose with e2 (not e1) negated does not reproduce the render."""
    p = simulate(2, preset=EASY, seed=11, hr_size=32).params.double()
    q = transformed_params(p, 1)
    q[:, [P["lens_e1"], P["lens_e2"]]] *= -1  # e1 back to +, e2 to -: the wrong rule
    gap = (clean_images(q, EASY, 32) - clean_images(p, EASY, 32).transpose(-2, -1)).abs().amax()
    assert float(gap) > 1e-2


def test_regressor_size_and_training_is_deterministic(tiny_shards: Path) -> None:
    m = Regressor()
    assert 50_000 <= sum(t.numel() for t in m.parameters()) <= 200_000
    params = read_split_params(tiny_shards, "train")
    y = downstream_targets(params, load_manifest(tiny_shards).param_names)
    hr = torch.rand(len(y), 1, 32, 32)
    runs = [train_regressor(hr, y, steps=4, batch=4, seed=s) for s in (3, 3, 4)]
    (m1, mu, sd), (m2, _, _), (m3, _, _) = runs
    assert not m1.training
    torch.testing.assert_close(mu, y.mean(0))
    torch.testing.assert_close(sd, y.std(0))
    p1, p2, p3 = (predict(m, hr[:5], mu, sd, batch=2) for m in (m1, m2, m3))
    assert p1.shape == (5, 3) and p1.dtype == torch.float64
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)
    with pytest.raises(ValueError, match="do not match"):
        train_regressor(hr, y[:3], steps=1)


def test_regressor_learns_theta_e() -> None:
    """~100 steps on 256 easy 32 px images: theta_E's RMSE on held-out images well below its spread (a
    regressor that learned nothing predicts the mean: RMSE = std)."""
    b = simulate(320, preset=EASY, seed=3, hr_size=32)
    y = downstream_targets(b.params, PARAM_NAMES)
    model, mu, sd = train_regressor(b.hr[:256], y[:256], steps=100, batch=16, seed=0)
    s = score(predict(model, b.hr[256:], mu, sd), y[256:])
    std = float(y[256:, 0].std(unbiased=False))
    assert s["theta_E"]["rmse"] < 0.8 * std, (s, std)


def test_score_and_squared_errors_on_constructed_numbers() -> None:
    truth = torch.zeros(4, 3, dtype=torch.float64)
    pred = torch.tensor([[1.0, 3.0, 4.0], [-1.0, 3.0, 4.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    s = score(pred, truth)
    assert s["theta_E"] == {"rmse": pytest.approx(math.sqrt(3.0)), "bias": pytest.approx(1.0)}
    assert s["lens_e1"]["rmse"] == pytest.approx(math.sqrt(4.5)) and s["lens_e2"]["bias"] == pytest.approx(
        2.0
    )
    assert s[ELLIPTICITY] == {"rmse": pytest.approx(math.sqrt(12.5))}  # |de| = 5, 5, 0, 0
    sq = squared_errors(pred, truth)
    assert sq[ELLIPTICITY].tolist() == [25.0, 25.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="must both be"):
        score(pred[:, :2], truth[:, :2])


def test_gap_closed() -> None:
    assert gap_closed(0.3, 0.2, 0.1) == pytest.approx(0.5)
    assert gap_closed(0.3, 0.1, 0.1) == pytest.approx(1.0)
    assert gap_closed(0.3, 0.3, 0.1) == pytest.approx(0.0)
    assert gap_closed(0.3, 0.4, 0.1) == pytest.approx(-0.5)
    assert gap_closed(0.1, 0.2, 0.3) == pytest.approx(0.5)  # bicubic better than HR: the sign still reads
    with pytest.raises(ValueError, match="no gap to close"):
        gap_closed(0.2, 0.1, 0.2)


def test_bootstrap_intervals() -> None:
    gen = torch.Generator().manual_seed(0)
    hr = {"t": torch.rand(400, generator=gen, dtype=torch.float64)}
    bic = {"t": hr["t"] + 1.0}
    mid = {"t": (hr["t"].sqrt() + bic["t"].sqrt()).square() / 4}  # RMSE about halfway
    lo, hi = bootstrap_gap_closed(bic, mid, hr, n_boot=200)["t"]
    share = gap_closed(*(float(d["t"].mean().sqrt()) for d in (bic, mid, hr)))
    assert lo <= share <= hi and lo > 0.3 and hi < 0.7
    dlo, dhi = bootstrap_rmse_difference(bic, hr, n_boot=200)["t"]
    assert dlo > 0  # bicubic clearly worse
    assert bootstrap_rmse_difference(hr, hr, n_boot=50)["t"] == (0.0, 0.0)
    assert all(math.isnan(v) for v in bootstrap_gap_closed(hr, mid, hr, n_boot=50)["t"])


@pytest.mark.parametrize("steps", [1, 2, 20, 37, 1000])
def test_regressor_schedule_is_warmup_then_cosine_to_zero(steps: int) -> None:
    """The regressor's lr_at arguments give its former schedule: linear warm-up over 5 % of the steps (at
    least 1), then cosine decay to 0, bit for bit."""
    warmup = max(1, steps // 20)
    for step in range(steps):
        if step < warmup:
            want = 2e-3 * (step + 1) / warmup
        else:
            t = (step - warmup) / max(1, steps - warmup)
            want = 0.5 * 2e-3 * (1.0 + math.cos(math.pi * t))
        assert lr_at(step, 2e-3, steps, warmup, "cosine", min_ratio=0.0) == want


def test_command_end_to_end(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [str(tiny_shards), "--model", "small=deeplense-small", "--steps", "6", "--batch", "4",
            "--limit", "4", "--boot", "50", "--out", str(out), "--no-progress"]  # fmt: skip
    assert downstream.main(argv) == 0
    result = json.loads((out / "downstream.json").read_text())
    assert list(result["scores"]) == ["HR", "bicubic", "small"]
    assert result["n_test"] == 4 and result["n_train"] == 38 and result["steps"] == 6
    for sc in result["scores"].values():
        assert set(sc) == {*TARGETS, ELLIPTICITY} and sc["theta_E"]["rmse"] > 0
    gap = result["gap_closed"]["small"]
    assert set(gap) == {*TARGETS, ELLIPTICITY} and len(gap["theta_E"]["ci95"]) == 2
    assert set(result["bicubic_minus_hr"]["theta_E"]) == {"rmse_diff", "ci95", "significant"}
    table = (out / "downstream.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["input", "HR", "bicubic", "small"]
    assert f"{result['scores']['small']['theta_E']['rmse']:.5f}" in rows[3]
    assert table in capsys.readouterr().out


def test_command_rejects_a_set_without_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    for d in ("HR", "LR"):
        (tmp_path / "src" / d).mkdir(parents=True)
    for i in range(10):
        hr = rng.random((16, 16), dtype=np.float32)
        np.save(tmp_path / "src" / "HR" / f"img_{i}.npy", hr)
        np.save(tmp_path / "src" / "LR" / f"img_{i}.npy", hr.reshape(8, 2, 8, 2).mean((1, 3)))
    pack_to_shards("deeplense", tmp_path / "src", tmp_path / "packed", shard_size=16)
    assert downstream.main([str(tmp_path / "packed"), "--out", str(tmp_path / "out")]) == 2
    assert "carry no simulator parameters" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(HpcSrError, match="taken"):
        parse_models(["HR=deeplense-small"], reserved=(HR, BICUBIC))
