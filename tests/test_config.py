"""Config schema: YAML + dotted overrides, errors that name the key, resolved config round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_sr.config import Config, ConfigError, flatten, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def test_overrides_are_typed_and_applied() -> None:
    cfg = load_config(
        None,
        [
            "train.lr_g=2e-4",
            "data.batch_size=32",
            "train.betas=[0.5, 0.9]",
            "model.batch_norm=true",
            "log.name=exp1",
        ],
    )
    assert cfg.train.lr_g == pytest.approx(2e-4) and isinstance(cfg.train.lr_g, float)
    assert cfg.data.batch_size == 32
    assert cfg.train.betas == (0.5, 0.9)
    assert cfg.model.batch_norm is True
    assert cfg.run_dir == Path("runs/exp1")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrg=1e-3", r"unknown config key 'train.lrg'; did you mean 'train.lr_g'\?"),
        ("trian.steps=5", r"unknown config key 'trian'; did you mean 'train'\?"),
        ("data.batch_size=many", r"data.batch_size: expected an integer, got 'many'"),
        ("train.precision=bf61", r"train.precision: 'bf61' is not one of .*did you mean 'bf16'"),
        ("model.batch_norm=3", r"model.batch_norm: expected true or false"),
        ("train=3", r"'train' is a section"),
        ("train.steps", r"not of the form section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stpes: 10\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: unknown config key 'train.stpes'; did you mean 'train.steps'"
    ):
        load_config(path)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "quickstart_cpu.yaml", ["train.lr_g=1e-3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert flatten(again)["train.lr_g"] == pytest.approx(1e-3)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(name: str) -> None:
    assert isinstance(load_config(REPO / "configs" / name), Config)


def test_demo_embedded_quickstart_equals_the_config_file() -> None:
    import yaml

    from hpc_sr.demo import QUICKSTART

    assert yaml.safe_load((REPO / "configs" / "quickstart_cpu.yaml").read_text()) == QUICKSTART
