"""Config schema: YAML + dotted overrides, errors that name the key, resolved config round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpc_sr.config import Config, ConfigError, DataConfig, config_from_dict, flatten, load_config, save_config
from hpc_sr.train.components import check_config

REPO = Path(__file__).resolve().parents[1]


def test_overrides_are_typed_and_applied() -> None:
    cfg = load_config(
        None,
        [
            "train.lr_g=2e-4",
            "data.batch_size=32",
            "train.betas=[0.5, 0.9]",
            "model.g.bicubic_skip=false",
            "log.name=exp1",
        ],
    )
    assert cfg.train.lr_g == pytest.approx(2e-4) and isinstance(cfg.train.lr_g, float)
    assert cfg.data.batch_size == 32
    assert cfg.train.betas == (0.5, 0.9)
    assert cfg.model.g.bicubic_skip is False
    assert cfg.run_dir == Path("runs/exp1")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrg=1e-3", r"unknown config key 'train.lrg'; did you mean 'train.lr_g'\?"),
        ("trian.steps=5", r"unknown config key 'trian'; did you mean 'train'\?"),
        ("data.batch_size=many", r"data.batch_size: expected an integer, got 'many'"),
        ("train.precision=bf61", r"train.precision: 'bf61' is not one of .*did you mean 'bf16'"),
        ("model.g.bicubic_skip=3", r"model.g.bicubic_skip: expected true or false"),
        ("train.betas=[0.9]", r"train.betas: expected a list of 2 values"),
        ("train.steps.x=3", r"'train.steps' is not a section"),
        ("model.g.options=3", r"model.g.options: expected a mapping"),
        ("train.losses=3", r"train.losses: expected a list"),
        ("model.g.arch.x=3", r"'model.g.arch' is not a section"),
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
def test_every_shipped_config_loads_and_resolves(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, Config)
    check_config(cfg)  # arch, options, loss terms and data source all registered


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: top level must be a mapping of sections"):
        load_config(listing)
    section = tmp_path / "section.yaml"
    section.write_text("train: 3\n")
    with pytest.raises(ConfigError, match=r"train: expected a mapping, got 3"):
        load_config(section)


def test_arch_options_and_loss_terms_by_dotted_override() -> None:
    cfg = load_config(
        None,
        [
            "model.g.arch=rcan",
            "model.g.options.groups=2",
            "train.losses.pixel.kind=mse",
            "train.losses.ssim.weight=0.5",
        ],
    )
    assert cfg.model.g.arch == "rcan" and cfg.model.g.options == {"groups": 2}
    terms = {t["term"]: t for t in cfg.train.losses}
    assert terms["pixel"]["kind"] == "mse" and terms["ssim"]["weight"] == 0.5 and "adversarial" in terms
    check_config(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.g.arch=rcna",
            r"model.g.arch: unknown arch 'rcna' \(did you mean 'rcan'\?\); valid: .*srresnet",
        ),
        ("model.g.options.chanels=8", r"model.g.options.chanels; did you mean 'channels'"),
        ("model.d.arch=unit", r"model.d.arch: unknown arch 'unit' \(did you mean 'unet'"),
        ("train.losses.pixle.weight=1", r"unknown loss term 'pixle' \(did you mean 'pixel'"),
        ("data.source=simulation", r"data.source: unknown source 'simulation' \(did you mean 'simulate'"),
    ],
)
def test_check_config_names_bad_registry_entries(override: str, message: str) -> None:
    cfg = load_config(None, [override, "train.steps=10", "train.pretrain_steps=5"])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_v1_flat_model_keys_migrate_in_files_and_overrides(tmp_path: Path) -> None:
    old = tmp_path / "v1.yaml"
    old.write_text("model:\n  channels: 32\n  d_blocks: 3\n")
    with pytest.warns(FutureWarning, match="model.channels, model.d_blocks"):
        cfg = load_config(old, ["model.blocks=4"])
    assert cfg.model.g.options == {"channels": 32, "blocks": 4}
    assert cfg.model.d.options == {"blocks": 3}


# ----------------------------------------------------------------------------------------------- data.options
NEW_FORM = {"loader": "memory", "num_workers": 0, "chunk_samples": 64}


def test_flat_data_keys_in_a_file_migrate_into_the_source_options(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("data:\n  source: shards\n  loader: memory\n  num_workers: 0\n  chunk_samples: 64\n")
    new.write_text(
        "data:\n  source: shards\n  options: {loader: memory, num_workers: 0, chunk_samples: 64}\n"
    )
    with pytest.warns(
        FutureWarning,
        match=r"data\.loader, data\.chunk_samples, data\.num_workers: read as "
        r"data\.options\.loader, data\.options\.chunk_samples, data\.options\.num_workers",
    ):
        migrated = load_config(old)
    assert migrated == load_config(new) and migrated.data.options == NEW_FORM
    check_config(migrated)


def test_flat_data_keys_on_the_command_line_migrate_into_the_source_options() -> None:
    with pytest.warns(FutureWarning, match=r"data\.loader: read as data\.options\.loader"):
        migrated = load_config(
            None, ["data.loader=memory", "data.num_workers=0", "data.options.chunk_samples=64"]
        )
    assert migrated == load_config(None, [f"data.options.{k}={v}" for k, v in NEW_FORM.items()])
    with pytest.warns(FutureWarning, match=r"data\.hr_size: read as data\.options\.hr_size"):
        sim = load_config(None, ["data.source=simulate", "data.hr_size=32", "data.sim_device=auto"])
    assert sim.data.options == {"hr_size": 32, "sim_device": "auto"}
    check_config(sim)


def _stored_v2_data(source: str) -> dict:
    """The data section a v2 checkpoint stored: every flat key, resolved."""
    return {
        "source": source, "path": "data/x", "preset": "deeplense_sr", "hr_size": 150, "scale": 2,
        "batch_size": 8, "patch_size": 0, "augment": True, "num_workers": 2, "loader": "block",
        "block_size": 16, "memory_copies": 0, "chunk_samples": 512, "val_images": 0, "target": "hr",
        "sim_device": "cpu",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("source", "options"),
    [
        (
            "shards",
            {"loader": "block", "block_size": 16, "memory_copies": 0, "chunk_samples": 512, "num_workers": 2},
        ),
        ("simulate", {"preset": "deeplense_sr", "hr_size": 150, "sim_device": "cpu"}),
    ],
)
def test_a_stored_v2_config_loads_as_its_new_form(source: str, options: dict) -> None:
    """Every key was stored, those of the other source too (whatever their value): they are dropped."""
    with pytest.warns(FutureWarning, match=r"read as data\.options\..*\(ignored: .*not settings of source"):
        cfg = config_from_dict({"data": _stored_v2_data(source)})
    new = {k: v for k, v in _stored_v2_data(source).items() if k in dataclasses.asdict(DataConfig())}
    assert cfg == config_from_dict({"data": {**new, "options": options}})
    check_config(cfg)


def test_a_key_of_another_source_is_an_error_naming_it(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  source: shards\n  hr_size: 150\n")
    with pytest.raises(
        ConfigError, match=r"data\.hr_size=150 is a setting of data\.source=simulate .*not of "
    ):
        load_config(old)
    with pytest.warns(FutureWarning):
        cfg = load_config(None, ["data.hr_size=64"])
    for bad, name in ((cfg, "hr_size"), (load_config(None, ["data.options.preset=wide"]), "preset")):
        message = (
            rf"unknown option data\.options\.{name}: an option of source 'simulate', not of 'shards' \(valid"
        )
        with pytest.raises(ConfigError, match=message):
            check_config(bad)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.options.loader=memroy",
            r"data\.options\.loader: 'memroy' is not one of .*did you mean 'memory'",
        ),
        (
            "data.options.num_wokers=0",
            r"unknown option data\.options\.num_wokers; did you mean 'num_workers'",
        ),
        ("data.options=3", r"data\.options: expected a mapping"),
    ],
)
def test_bad_data_options_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(load_config(None, [override]))
