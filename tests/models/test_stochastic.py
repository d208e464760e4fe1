"""Stochastic generators (model.g.noise_channels): noise input, crps term, config checks, a tiny run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import hpc_sr
from hpc_sr.apps.export import ExportError, export_onnx, export_torchscript
from hpc_sr.config import Config, ConfigError, GeneratorConfig, TrainConfig, load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import CheckpointError
from hpc_sr.eval.uncertainty import draw_samples
from hpc_sr.models.artifacts import load_generator
from hpc_sr.models.layers import bicubic, lr_consistency_projection
from hpc_sr.models.losses import LossInputs, build_losses, crps_ensemble
from hpc_sr.models.registry import (
    GENERATORS,
    GeneratorCommon,
    build_generator,
    generator_names,
    generator_spec,
)
from hpc_sr.train.components import build_generator as build_generator_from_config
from hpc_sr.train.components import check_config, init_generator, samples_per_input
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides


def tiny(arch: str, noise: int, **common: bool) -> torch.nn.Module:
    opts = dataclasses.asdict(GENERATORS[arch].options.tiny())
    flags = {"bicubic_skip": False, **common}
    torch.manual_seed(0)
    return build_generator(arch, opts, 2, GeneratorCommon(noise_channels=noise, **flags)).eval()


def first_conv(g: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in g.modules() if isinstance(m, torch.nn.Conv2d))


# ----------------------------------------------------------------------------------------------- generators
def test_noise_channels_0_keeps_the_shipped_model_bit_identical() -> None:
    g = hpc_sr.load_generator("deeplense-small")
    assert g.noise_channels == 0 and first_conv(g).in_channels == 1
    lr = torch.rand(2, 1, 13, 11)
    with torch.no_grad():
        old = lr_consistency_projection(g.predict(lr) + bicubic(lr, 2), lr, 2)  # the forward before noise
        assert torch.equal(g(lr), old)


@pytest.mark.parametrize("arch", generator_names())
def test_noise_0_builds_the_same_weights_as_before(arch: str) -> None:
    g = tiny(arch, 0)
    assert first_conv(g).in_channels == 1 and g.net_in_channels == 1
    sd0, sd1 = g.state_dict(), tiny(arch, 1).state_dict()
    assert list(sd0) == list(sd1)  # same keys: only the first conv's input width changes
    changed = [k for k in sd0 if sd0[k].shape != sd1[k].shape]
    assert changed == [next(k for k in sd0 if k.endswith("weight"))]


@pytest.mark.parametrize("arch", generator_names())
def test_every_arch_samples_with_noise_and_each_sample_is_lr_consistent(arch: str) -> None:
    g = tiny(arch, 1, lr_consistent=True)
    assert first_conv(g).in_channels == 2 and g.net_in_channels == 2
    lr = torch.rand(2, 1, 9, 11)
    n1, n2 = torch.randn(2, 1, 9, 11), torch.randn(2, 1, 9, 11)
    with torch.no_grad():
        a, a2, b, drawn = g(lr, n1), g(lr, n1.clone()), g(lr, n2), g(lr)
    assert a.shape == (2, 1, 18, 22)
    assert torch.equal(a, a2)
    assert (a - b).abs().max() > 1e-6 and (a - drawn).abs().max() > 1e-6
    for sample in (a, b, drawn):
        torch.testing.assert_close(F.avg_pool2d(sample, 2), lr, rtol=0, atol=1e-6)


def test_the_bicubic_skip_uses_only_the_lr_channels() -> None:
    g = build_generator("edsr", {"channels": 4, "blocks": 1}, 2, GeneratorCommon(noise_channels=2))
    lr = torch.rand(1, 1, 8, 8)
    with torch.no_grad():  # the tail starts at zero: every sample is bicubic(LR), whatever the noise
        assert torch.equal(g(lr, torch.randn(1, 2, 8, 8)), bicubic(lr, 2))


# ----------------------------------------------------------------------------------------------- crps
def test_crps_equals_hand_computed_values() -> None:
    # M=2: (|1-3| + |2-3|)/2 - (|1-2| + |2-1|)/4 = 1;  M=3: (2 + 1 + 2)/3 - 2 (1 + 4 + 3)/12 = 1/3
    assert float(crps_ensemble(torch.tensor([[1.0], [2.0]]), torch.tensor([3.0]))) == pytest.approx(1.0)
    # the truth between two samples: no skill penalty beyond their spread
    assert float(crps_ensemble(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0]))) == pytest.approx(0.0)
    three = crps_ensemble(torch.tensor([[0.0], [1.0], [4.0]]), torch.tensor([2.0]))
    assert float(three) == pytest.approx(1 / 3)


def test_crps_matches_the_pairwise_definition_and_identical_samples_give_the_mae() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, 4), torch.randn(3, 4)
    pairs = (x.unsqueeze(0) - x.unsqueeze(1)).abs().sum((0, 1)) / (2 * 5 * 4)
    torch.testing.assert_close(crps_ensemble(x, y), ((x - y).abs().mean(0) - pairs).mean())
    same = x[:1].repeat(4, 1, 1).requires_grad_(True)
    loss = crps_ensemble(same, y)
    torch.testing.assert_close(loss, (x[0] - y).abs().mean())
    loss.backward()  # shifting every sample moves the score as the MAE's gradient says
    torch.testing.assert_close(same.grad.sum(0), torch.sign(x[0] - y) / y.numel())


def test_crps_is_lowest_for_the_true_spread() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(200_000, generator=gen)
    score = {s: float(crps_ensemble(s * torch.randn(2, 200_000, generator=gen), y)) for s in (0.5, 1.0, 2.0)}
    assert score[1.0] < score[0.5] and score[1.0] < score[2.0]
    mse_like = {s: float((s * torch.randn(200_000, generator=gen) - y).pow(2).mean()) for s in (0.5, 1.0)}
    assert mse_like[0.5] < mse_like[1.0]  # a pixel loss on each sample prefers too little spread


def test_the_crps_term_reads_the_sample_major_batch() -> None:
    (term,) = build_losses([{"term": "crps"}])
    hr = torch.rand(3, 1, 4, 4)
    sr = torch.rand(6, 1, 4, 4)  # rows m * 3 + b
    x = LossInputs(sr=sr, hr=hr.repeat(2, 1, 1, 1), lr=hr, samples=2)
    torch.testing.assert_close(term.term(x), crps_ensemble(sr.reshape(2, 3, 1, 4, 4), hr))
    with pytest.raises(ValueError, match="crps.*2 samples"):
        term.term(LossInputs(sr=sr, hr=sr, lr=hr, samples=1))


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.g.noise_channels=-1"], r"model\.g\.noise_channels: expected an integer >= 0"),
        (["model.g.noise_channels=1.5"], r"model\.g\.noise_channels: expected an integer"),
        (["train.samples_per_input=2"], r"train\.samples_per_input=2: a deterministic generator"),
        (["model.g.noise_channels=1", "train.samples_per_input=-1"], r"train\.samples_per_input: expected"),
        (["train.losses=[{term: pixel}, {term: crps}]"], r"train\.losses: the crps term needs >= 2"),
        (
            ["model.g.noise_channels=1", "train.samples_per_input=1", "train.losses=[{term: crps}]"],
            r"train\.losses: the crps term needs >= 2 samples.*samples_per_input=1",
        ),
    ],
)
def test_config_errors_name_the_key(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_config(load_config(None, overrides))


def _sections(cfg: Config) -> tuple[TrainConfig, GeneratorConfig]:
    """The two config sections samples_per_input reads."""
    return cfg.train, cfg.model.g


def test_samples_per_input_defaults() -> None:
    assert samples_per_input(*_sections(load_config(None, []))) == 1
    assert samples_per_input(*_sections(load_config(None, ["model.g.noise_channels=2"]))) == 2
    four = load_config(None, ["model.g.noise_channels=1", "train.samples_per_input=4"])
    assert samples_per_input(four.train, four.model.g) == 4


# ----------------------------------------------------------------------------------------------- training
@pytest.fixture
def one_rank_group(tmp_path: Path):  # noqa: ANN201
    """A real gloo process group of world size 1 (the DDP back-end's collectives), torn down afterwards."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("centred", [False, True])
def test_a_tiny_stochastic_run_trains_and_its_checkpoint_reloads_with_the_noise_input(
    one_rank_group: None, tiny_shards: Path, tmp_path: Path, centred: bool
) -> None:
    of = "mean" if centred else "sample"
    losses = f"[{{term: pixel, kind: mse, of: {of}}}, {{term: crps}}, {{term: adversarial, weight: 0.005}}]"
    over = tiny_overrides(
        tiny_shards,
        tmp_path,
        steps=4,
        pretrain=2,
        **{
            "model.g.arch": "rrdb",
            "model.g.options": '{"channels": 8, "blocks": 1, "growth": 4}',
            "model.g.lr_consistent": "true",
            "model.g.noise_channels": 1,
            "model.g.noise_centred": str(centred).lower(),
            "train.losses": losses,
            "train.ckpt_every": 4,
            "train.val_every": 4,
            "log.tensorboard": "false",
        },
    )
    trainer = Trainer(load_config(None, over), DistEnv(), torch.device("cpu"), resume="never")
    assert trainer.step_opts.samples_per_input == (4 if centred else 2)
    assert trainer.step_opts.antithetic_noise == (1 if centred else 0)
    assert trainer.run() == 0
    model, payload = load_generator(tmp_path / "tiny")
    assert payload["generator"]["noise_channels"] == 1 and model.noise_channels == 1
    assert payload["generator"].get("noise_centred", False) == centred and model.noise_centred == centred
    assert first_conv(model).in_channels == 2
    lr, noise = torch.rand(1, 1, 9, 11), torch.randn(1, 1, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(lr, noise), trainer.ema.module.eval()(lr, noise), rtol=0, atol=1e-6)
        torch.testing.assert_close(F.avg_pool2d(model(lr), 2), lr, rtol=0, atol=1e-6)
    text = (tmp_path / "tiny" / "metrics.jsonl").read_text()
    assert '"loss_g_crps"' in text and '"loss_g_adversarial"' in text


# ----------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("export", [export_torchscript, export_onnx])
def test_export_refuses_a_stochastic_generator(export: object, tmp_path: Path) -> None:
    g = tiny("srresnet", 1)
    with pytest.raises(ExportError, match=r"stochastic generator \(noise_channels=1\).*state_dict"):
        export(g, tmp_path / "g.out")  # type: ignore[operator]
    assert not (tmp_path / "g.out").exists()


# ----------------------------------------------------------------------------------------------- centred
@pytest.mark.parametrize("arch", ["srresnet", "rrdb", "swinir"])
def test_a_centred_generator_is_odd_in_the_noise_around_its_centre(arch: str) -> None:
    g = tiny(arch, 1, lr_consistent=True, noise_centred=True)
    with torch.no_grad():
        first_conv(g).weight[:, 1:].normal_(0, 0.3)  # the noise input does something
        for m in g.modules():  # and so does the last layer (tiny nets may start near zero)
            if isinstance(m, torch.nn.Conv2d) and m.weight.abs().max() == 0:
                m.weight.normal_(0, 0.01)
        lr, z = torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
        plus, minus, centre = g(lr, z), g(lr, -z), g(lr, torch.zeros_like(z))
        assert float((plus - centre).abs().max()) > 1e-4  # samples differ from the centre
        torch.testing.assert_close((plus + minus) / 2, centre, rtol=0, atol=1e-6)
        torch.testing.assert_close(F.avg_pool2d(plus, 2), lr, rtol=0, atol=1e-6)  # still LR-consistent
        raw = draw_samples(g, lr, 6, seed=3, clamp=False, antithetic=True)
        torch.testing.assert_close(raw.mean(0), centre, rtol=0, atol=1e-6)
        torch.testing.assert_close(raw[1] - centre, centre - raw[0], rtol=0, atol=1e-6)  # pairs (z, -z)
        iid = draw_samples(g, lr, 6, seed=3, clamp=False)
        assert float((iid.mean(0) - centre).abs().max()) > 1e-5  # iid draws average only near it
        # the pairs drawn with the centre computed once are the samples forward() gives one by one
        gen = torch.Generator().manual_seed(3)
        zs = [torch.randn((2, 1, 8, 8), generator=gen) for _ in range(3)]
        one_by_one = torch.stack([g(lr, sign * z) for z in zs for sign in (1, -1)])
        torch.testing.assert_close(raw, one_by_one, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="antithetic pairs need an even n, got 5"):
        draw_samples(g, lr, 5, antithetic=True)
    with pytest.raises(ValueError, match="noise_centred needs noise_channels > 0"):
        tiny(arch, 0, noise_centred=True)
    with pytest.raises(ConfigError, match="model.g.noise_centred=true needs a stochastic generator"):
        generator_spec(load_config(None, ["model.g.noise_centred=true"]).model.g)


def test_a_stochastic_generator_starts_from_a_deterministic_one(tmp_path: Path) -> None:
    over = ["model.g.arch=rrdb", 'model.g.options={"channels": 32, "blocks": 1, "growth": 16}',
            "model.g.lr_consistent=true", "model.g.noise_channels=1",
            "model.g.noise_centred=true"]  # fmt: skip
    cfg = load_config(None, over)
    g = build_generator_from_config(cfg.model, 2)
    init_generator(g, "deeplense-small", cfg.model.g, cfg.data.scale)
    source = hpc_sr.load_generator("deeplense-small")
    assert first_conv(g).weight[:, 1:].abs().max() == 0  # the noise inputs start at zero
    lr = torch.rand(2, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(g(lr), source(lr), rtol=0, atol=1e-6)  # every sample is the source's SR
    other = load_config(None, [*over[:1], 'model.g.options={"channels": 16, "blocks": 1, "growth": 16}',
                               *over[2:]])  # fmt: skip
    with pytest.raises(CheckpointError, match="deeplense-small.*(another model config|noise input)"):
        init_generator(build_generator_from_config(other.model, 2), "deeplense-small", other.model.g, 2)


def test_antithetic_training_samples_pair_up_around_the_centre_and_the_mean_pixel_term_sees_it() -> None:
    from hpc_sr.train.step import antithetic_samples

    g = tiny("rrdb", 2, lr_consistent=True, noise_centred=True)
    with torch.no_grad():
        first_conv(g).weight[:, 1:].normal_(0, 0.3)
        g.tail.weight.normal_(0, 0.01)
        lr = torch.rand(3, 1, 5, 5).repeat(4, 1, 1, 1)  # 4 samples of 3 inputs, sample-major
        sr = antithetic_samples(g, lr, 2, 4).unflatten(0, (4, 3))
        centre = g(lr[:3], torch.zeros(3, 2, 5, 5))
    assert sr.shape == (4, 3, 1, 10, 10)
    torch.testing.assert_close((sr[0] + sr[1]) / 2, centre, rtol=0, atol=1e-6)  # pair (z, -z)
    torch.testing.assert_close((sr[2] + sr[3]) / 2, centre, rtol=0, atol=1e-6)
    assert float((sr[0] - sr[2]).abs().max()) > 1e-5  # pairs are independent of each other
    torch.testing.assert_close(F.avg_pool2d(sr[1], 2), lr[:3], rtol=0, atol=1e-6)  # each LR-consistent
    with pytest.raises(ValueError, match="even number of samples per input, got 3"):
        antithetic_samples(g, lr[:9], 2, 3)
    with pytest.raises(ValueError, match="pair=True needs a centred generator"):
        tiny("rrdb", 1)(lr[:3], pair=True)
    hr = torch.rand(3, 1, 10, 10)
    centre, d = torch.rand(3, 1, 10, 10), 0.1 * torch.randn(3, 1, 10, 10)
    sr = torch.cat([centre + d, centre - d])  # an antithetic pair of each input
    x = LossInputs(sr=sr, hr=hr.repeat(2, 1, 1, 1), lr=lr[:6], samples=2)
    (mean_term,) = build_losses([{"term": "pixel", "kind": "mse", "of": "mean"}])
    (each_term,) = build_losses([{"term": "pixel", "kind": "mse"}])
    torch.testing.assert_close(mean_term.term(x), F.mse_loss(centre, hr))
    torch.testing.assert_close(each_term.term(x), F.mse_loss(centre, hr) + d.pow(2).mean())  # + the spread
    centred = ["model.g.noise_channels=1", "model.g.noise_centred=true"]
    for bad in (3, 2):
        with pytest.raises(ConfigError, match=rf"train.samples_per_input={bad}: a centred generator"):
            samples_per_input(*_sections(load_config(None, [*centred, f"train.samples_per_input={bad}"])))
    assert samples_per_input(*_sections(load_config(None, centred))) == 4


def test_antithetic_crps_counts_only_independent_pairs_and_is_lowest_at_the_true_spread() -> None:
    torch.manual_seed(0)
    y = torch.randn(20000)
    z = torch.randn(2, 20000)

    def score(sigma: float, antithetic: bool) -> float:
        s = torch.stack([sigma * z[0], -sigma * z[0], sigma * z[1], -sigma * z[1]])
        return float(crps_ensemble(s, y, antithetic=antithetic))

    def one_pair(sigma: float) -> float:
        return float(crps_ensemble(torch.stack([sigma * z[0], -sigma * z[0]]), y))

    assert one_pair(20.0) < 0.2 * one_pair(1.0)  # the plain estimator on one pair rewards a huge spread
    scores = {s: score(s, True) for s in (0.5, 0.8, 1.0, 1.25, 2.0)}
    assert min(scores, key=scores.get) == 1.0  # the pair-aware one is lowest at the truth's spread
    iid = torch.randn(4, 20000)
    torch.testing.assert_close(  # with 2 pairs it equals the skill less half the mean cross-pair distance
        crps_ensemble(iid, y, antithetic=True),
        ((iid - y).abs().mean(0) - 0.5 * torch.stack(
            [(iid[i] - iid[j]).abs() for i in (0, 1) for j in (2, 3)]).mean(0)).mean(),  # fmt: skip
    )
    with pytest.raises(ValueError, match="antithetic pairs need an even number >= 4 of samples, got 2"):
        crps_ensemble(iid[:2], y, antithetic=True)
