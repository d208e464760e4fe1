"""Loss labels (real = 1, fake = 0), values against their formulas, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.config import ConfigError, load_config
from hpc_sr.models.losses import (
    LossInputs,
    build_losses,
    discriminator_loss,
    feature_matching_loss,
    flux_loss,
    generator_adversarial_loss,
    loss_names,
    pixel_loss,
)
from hpc_sr.models.registry import build_discriminator, build_generator

KINDS = ["bce", "lsgan", "ragan"]
# logits of a discriminator that is right: per kind, "real" and "fake" outputs it aims for
CONFIDENT = {"bce": (8.0, -8.0), "lsgan": (1.0, 0.0), "ragan": (8.0, -8.0)}


def _logits(real: float, fake: float, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    jitter = 0.05 * torch.randn(2, n, generator=g)
    return (real + jitter[0]).requires_grad_(), (fake + jitter[1]).requires_grad_()


def test_pixel_loss() -> None:
    sr, hr = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])
    assert pixel_loss(sr, hr, "l1").item() == pytest.approx(1.0)
    assert pixel_loss(sr, hr, "mse").item() == pytest.approx(5.0 / 3.0)


def test_the_psnr_kind_is_minus_the_mean_per_image_psnr_and_weighs_easy_images_up() -> None:
    from hpc_sr.eval.metrics import per_image_metrics

    g = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 1, 16, 16, generator=g)
    noise = torch.randn(3, 1, 16, 16, generator=g) * torch.tensor([0.01, 0.05, 0.2]).reshape(3, 1, 1, 1)
    sr = (hr + noise).requires_grad_()
    loss = pixel_loss(sr, hr, "psnr")
    psnr = per_image_metrics(sr.detach().clamp(0, 1), hr)["psnr"]  # unclamped here: compare unclamped
    mse = (sr.detach() - hr).square().flatten(1).mean(1)
    assert loss.item() == pytest.approx(float((10 * torch.log10(mse)).mean()), rel=1e-6)
    assert -loss.item() == pytest.approx(float(psnr.mean()), abs=0.5)  # the clamp moves it a little
    loss.backward()
    per_image = sr.grad.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)  # type: ignore[union-attr]
    assert per_image[0] > per_image[1] > per_image[2]  # 1 / MSE: the easy image counts most
    assert torch.isfinite(pixel_loss(hr, hr, "psnr"))  # an exact match: the floor keeps it finite


def test_the_rmse_kind_weighs_images_between_pooled_mse_and_psnr() -> None:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 1, 16, 16, generator=g)
    noise = torch.randn(2, 1, 16, 16, generator=g) * torch.tensor([0.01, 0.1]).reshape(2, 1, 1, 1)
    weights = {}
    for kind in ("mse", "rmse", "psnr"):
        sr = (hr + noise).requires_grad_()
        loss = pixel_loss(sr, hr, kind)
        if kind == "rmse":
            mse = noise.square().flatten(1).mean(1)
            assert loss.item() == pytest.approx(float(mse.sqrt().mean()), rel=1e-5)
        loss.backward()
        per_image = sr.grad.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)  # type: ignore[union-attr]
        weights[kind] = float(per_image[0] / per_image[1])  # easy image's weight over the hard one's
    # pooled MSE weighs both alike, psnr by 1 / MSE (100x here), rmse by 1 / sqrt(MSE) (about 10x)
    assert weights["mse"] == pytest.approx(1.0, rel=1e-4)
    assert 5 < weights["rmse"] < 20 < weights["psnr"]
    assert torch.isfinite(pixel_loss(hr, hr, "rmse"))


@pytest.mark.parametrize(
    "call",
    [
        lambda: pixel_loss(torch.zeros(1), torch.zeros(1), "l2"),
        lambda: discriminator_loss(torch.zeros(1), torch.zeros(1), "wgan"),
        lambda: generator_adversarial_loss(torch.zeros(1), torch.zeros(1), "wgan"),
    ],
)
def test_unknown_kind_names_it_and_the_valid_ones(call) -> None:
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    assert ("'l2'" in msg and "l1" in msg and "mse" in msg) or ("'wgan'" in msg and "ragan" in msg)


@pytest.mark.parametrize("kind", KINDS)
def test_confident_discriminator_low_d_loss_high_g_loss(kind: str) -> None:
    good, bad = CONFIDENT[kind]
    real, fake = _logits(good, bad)
    d_right = discriminator_loss(real, fake, kind)
    d_wrong = discriminator_loss(fake, real, kind)  # D calls the fakes real
    assert d_right.item() < 0.01 < d_wrong.item()
    g_caught = generator_adversarial_loss(real, fake, kind)  # D spots the fakes
    g_fooling = generator_adversarial_loss(real, real.detach().clone(), kind) if kind != "ragan" else None
    assert g_caught.item() > 0.4
    if g_fooling is not None:
        assert g_fooling.item() < 0.01
    else:  # relativistic: fakes rated above reals fool D
        assert generator_adversarial_loss(fake, real, kind).item() < 0.01


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_signs_real_label_one_fake_label_zero(kind: str) -> None:
    """Guard against the published DeepLense SRGAN bug (fake label = 1): D must push fake logits down."""
    real, fake = _logits(0.5, 0.5)
    discriminator_loss(real, fake, kind).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    real2, fake2 = _logits(0.5, 0.5)
    generator_adversarial_loss(real2, fake2, kind).backward()
    assert (fake2.grad < 0).all()  # G pushes its fakes towards "real"


def test_bce_values_and_with_logits() -> None:
    real, fake = _logits(0.3, -0.2)
    expected = F.binary_cross_entropy(torch.sigmoid(real), torch.ones(6)) + F.binary_cross_entropy(
        torch.sigmoid(fake), torch.zeros(6)
    )
    torch.testing.assert_close(discriminator_loss(real, fake, "bce"), expected)
    torch.testing.assert_close(
        generator_adversarial_loss(None, fake, "bce"),
        F.binary_cross_entropy(torch.sigmoid(fake), torch.ones(6)),
    )
    # far past sigmoid saturation: with-logits gives softplus(300) = 300 per term; sigmoid + BCE caps at 100
    very_wrong = discriminator_loss(torch.tensor([-300.0]), torch.tensor([300.0]), "bce")
    assert very_wrong.item() == pytest.approx(600.0)


def test_lsgan_values() -> None:
    real, fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(0.5 * (0.125 + 0.5))
    assert generator_adversarial_loss(None, fake, "lsgan").item() == pytest.approx(0.5 * 0.5)


def test_ragan_values_and_needs_real_logits() -> None:
    real = torch.tensor([1.0, 2.0], dtype=torch.float64)
    fake = torch.tensor([-1.0, 0.5], dtype=torch.float64)

    def nll(x: float, label: int) -> float:
        p = 1.0 / (1.0 + math.exp(-x))
        return -math.log(p if label else 1.0 - p)

    rm, fm = real.mean().item(), fake.mean().item()
    d = 0.5 * (
        sum(nll(r - fm, 1) for r in real.tolist()) / 2 + sum(nll(f - rm, 0) for f in fake.tolist()) / 2
    )
    g = 0.5 * (
        sum(nll(r - fm, 0) for r in real.tolist()) / 2 + sum(nll(f - rm, 1) for f in fake.tolist()) / 2
    )
    assert discriminator_loss(real, fake, "ragan").item() == pytest.approx(d, rel=1e-12)
    assert generator_adversarial_loss(real, fake, "ragan").item() == pytest.approx(g, rel=1e-12)
    with pytest.raises(ValueError, match="real_logits"):
        generator_adversarial_loss(None, fake, "ragan")


@pytest.mark.parametrize("kind", KINDS)
def test_adversarial_gradient_reaches_generator_not_discriminator(kind: str) -> None:
    torch.manual_seed(0)
    g = build_generator("srresnet", {"channels": 4, "blocks": 1}, 2)
    torch.nn.init.normal_(g.tail.weight, std=0.1)  # not the zero tail: the adversarial gradient must flow
    d = build_discriminator("srgan", {"channels": 4, "blocks": 2})
    lr, hr = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 16, 16)
    d.requires_grad_(False)
    real_logits, real_feats = d.forward_features(hr)
    fake_logits, fake_feats = d.forward_features(g(lr))
    loss = generator_adversarial_loss(real_logits, fake_logits, kind) + feature_matching_loss(
        real_feats, fake_feats
    )
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    assert all(p.grad is None for p in d.parameters())


def test_feature_matching_loss() -> None:
    real = [torch.ones(2, 3, 4, 4, requires_grad=True), torch.zeros(2, 5, requires_grad=True)]
    fake = [torch.full((2, 3, 4, 4), 1.5, requires_grad=True), torch.zeros(2, 5, requires_grad=True)]
    assert feature_matching_loss(real, [r.detach() for r in real]).item() == 0.0
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx((0.5 + 0.0) / 2)
    loss.backward()
    assert fake[0].grad is not None and fake[0].grad.abs().sum() > 0
    assert real[0].grad is None  # real features are targets, detached
    with pytest.raises(ValueError, match="2 real and 1 fake"):
        feature_matching_loss(real, fake[:1])


def test_flux_loss() -> None:
    hr = torch.rand(3, 1, 8, 8) + 0.1
    scale = torch.tensor([1.1, 0.8, 1.0]).view(3, 1, 1, 1)
    assert flux_loss(hr * scale, hr).item() == pytest.approx((0.1 + 0.2 + 0.0) / 3, rel=1e-5)
    empty = flux_loss(torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    assert torch.isfinite(empty)
    sr = (hr * 1.2).requires_grad_()
    flux_loss(sr, hr).backward()
    assert sr.grad is not None and (sr.grad > 0).all()


def test_registry_lists_terms_and_builds_weighted_terms() -> None:
    assert {"pixel", "adversarial", "feature_matching", "flux", "ssim", "lr_consistency"} <= set(loss_names())
    terms = build_losses([{"term": "pixel", "kind": "mse", "weight": 2}, {"term": "flux", "weight": "1e-1"}])
    assert [(t.name, t.weight) for t in terms] == [("pixel", 2.0), ("flux", 0.1)]
    sr, hr = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    x = LossInputs(sr=sr, hr=hr, lr=torch.ones(1, 1, 2, 2))
    assert terms[0].term(x).item() == pytest.approx(1.0)  # MSE, not L1 scaled
    assert terms[1].term(x).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([{"term": "pixl"}], r"train\.losses\[0\]\.term: unknown loss term 'pixl' \(did you mean 'pixel'"),
        ([{"term": "pixel", "knd": "l1"}], r"train\.losses\[0\]\(pixel\)\.knd; did you mean 'kind'"),
        ([{"term": "pixel", "kind": "l3"}], r"kind: 'l3' is not one of \['l1', 'mse', 'rmse', 'psnr'\]"),
        ([{"term": "pixel"}, {"term": "pixel"}], r"listed twice"),
        ([{"weight": 1}], r"expected a mapping with a 'term' key"),
        ([{"term": "flux", "weight": "heavy"}], r"train\.losses\[0\]\.weight: expected a number"),
    ],
)
def test_bad_terms_are_config_errors_naming_the_key(spec: list[dict], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_losses(spec)


def test_lr_consistency_term_is_zero_for_a_consistent_image() -> None:
    (term,) = build_losses([{"term": "lr_consistency"}])
    hr = torch.rand(2, 1, 8, 8)
    lr = F.avg_pool2d(hr, 2)
    assert term.term(LossInputs(sr=hr, hr=hr, lr=lr)).item() == 0.0
    assert term.term(LossInputs(sr=hr + 0.1, hr=hr, lr=lr)).item() == pytest.approx(0.1, rel=1e-5)


def test_v1_flat_loss_keys_migrate_to_terms() -> None:
    with pytest.warns(FutureWarning, match="train.adv_weight"):
        cfg = load_config(None, ["train.pixel_loss=mse", "train.adv_weight=1e-2", "train.flux_weight=0.5"])
    by_name = {t["term"]: t for t in cfg.train.losses}
    assert by_name["pixel"]["kind"] == "mse"
    assert by_name["adversarial"]["weight"] == pytest.approx(1e-2)
    assert by_name["flux"]["weight"] == pytest.approx(0.5)
