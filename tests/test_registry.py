"""The one registry idiom (hpc_sr.registry): registration, lookup errors, typed options, listing, lazy
loading."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from hpc_sr import registry
from hpc_sr.config import ConfigError, closest, did_you_mean
from hpc_sr.registry import NoOptions, Registry, make_options

PACKAGE = Path(__file__).resolve().parents[1] / "hpc_sr"


@dataclass
class WidgetOptions:
    size: int = 3
    rate: float = 0.5
    mode: Literal["fast", "slow"] = "fast"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size={self.size} must be >= 1")


def _widgets() -> Registry[type]:
    reg: Registry[type] = Registry("widget", noun="widget kind", attr="kind")

    @reg.register("round", WidgetOptions)
    class Round:
        pass

    @reg.register("square")
    class Square:
        pass

    return reg


def test_register_and_look_up_with_typed_options() -> None:
    reg = _widgets()
    assert reg.names() == ["round", "square"] and list(reg) == ["round", "square"] and len(reg) == 2
    assert "round" in reg and "oval" not in reg
    entry = reg.get("round", "shop.widget")
    assert entry.cls.kind == "round" and entry.options is WidgetOptions  # type: ignore[attr-defined]
    opts = entry.make_options({"size": 4.0, "rate": "1e-3", "mode": "slow"}, "shop.options")
    assert opts == WidgetOptions(size=4, rate=1e-3, mode="slow") and isinstance(opts.size, int)
    assert reg["square"].options is NoOptions and reg["square"].make_options(None, "k") == NoOptions()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sise": 2}, r"option shop\.options\.sise; did you mean 'size'\? \(valid: mode, rate, size\)"),
        ({"colour": 2}, r"unknown option shop\.options\.colour \(valid: mode, rate, size\)"),
        ({"size": "big"}, r"shop\.options\.size: expected an integer, got 'big'"),
        ({"mode": "fats"}, r"options\.mode: 'fats' is not one of \['fast', 'slow'\] \(did you mean 'fast'"),
        ({"size": 0}, r"shop\.options: size=0 must be >= 1"),
    ],
)
def test_bad_options_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_options(WidgetOptions, values, "shop.options")


def test_unknown_name_names_the_key_the_closest_and_the_valid_choices() -> None:
    reg = _widgets()
    message = r"^shop\.widget: unknown widget kind 'rund' \(did you mean 'round'\?\); valid: round, square$"
    with pytest.raises(ConfigError, match=message):
        reg.get("rund", "shop.widget")
    with pytest.raises(ConfigError, match=r"unknown widget kind 'hexagon'; valid: round, square$"):
        reg.get("hexagon", "shop.widget")


def test_an_option_of_another_entry_says_whose_it_is() -> None:
    reg = _widgets()
    assert reg.options("round", {"size": 2}, "shop.widget", "shop.options") == WidgetOptions(size=2)
    message = (
        r"unknown option shop\.options\.size: an option of widget kind 'round', not of 'square' \(valid: none"
    )
    with pytest.raises(ConfigError, match=message):
        reg.options("square", {"size": 2}, "shop.widget", "shop.options")
    with pytest.raises(ConfigError, match=r"shop\.widget: unknown widget kind 'squar'"):
        reg.options("squar", {}, "shop.widget", "shop.options")


def test_duplicate_registration_and_non_dataclass_options_are_refused() -> None:
    reg = _widgets()
    same = reg["round"].cls
    assert reg.register("round", WidgetOptions)(same) is same  # the same class again: harmless

    class Other:
        pass

    with pytest.raises(ValueError, match="widget 'round' is registered twice"):
        reg.register("round", WidgetOptions)(Other)
    with pytest.raises(TypeError, match="widget 'bad': options must be a dataclass"):
        reg.register("bad", dict)


def test_listing_shows_each_entry_with_its_option_defaults() -> None:
    assert _widgets().listing() == [
        "  round        size=3, rate=0.5, mode='fast'",
        "  square       (no options)",
    ]


def test_the_package_is_imported_on_first_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "gadgets"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from hpc_sr.registry import Registry\n\nREG = Registry('gadget', 'gadgets')\n"
    )
    monkeypatch.setattr(registry, "_LOADED", set())
    body = "from gadgets import REG\n\n@REG.register({name!r})\nclass Thing:\n    pass\n"
    (pkg / "lever.py").write_text(body.format(name="lever"))
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "spring.py").write_text(body.format(name="spring"))  # subpackages too
    monkeypatch.syspath_prepend(str(tmp_path))
    import gadgets  # type: ignore[import-not-found]

    try:
        assert "gadgets.lever" not in sys.modules  # registering imports nothing
        assert gadgets.REG.names() == ["lever", "spring"]
        assert {"gadgets.lever", "gadgets.sub.spring"} <= set(sys.modules)
    finally:
        for name in [m for m in sys.modules if m == "gadgets" or m.startswith("gadgets.")]:
            del sys.modules[name]


def test_did_you_mean_helpers() -> None:
    assert closest("rcna", ["rcan", "edsr"]) == "rcan" and closest("zzz", ["rcan"]) is None
    assert did_you_mean("unit", ["unet", "srgan"]) == " (did you mean 'unet'?)"
    assert did_you_mean("zzz", ["unet"]) == ""


def test_get_close_matches_is_called_in_one_place_only() -> None:
    calls = {
        str(p.relative_to(PACKAGE)): len(re.findall(r"get_close_matches\(", p.read_text()))
        for p in PACKAGE.rglob("*.py")
    }
    assert {p: n for p, n in calls.items() if n} == {"config.py": 1}


def test_config_archs_lists_every_registry_with_options() -> None:
    from hpc_sr.apps.catalog import format_catalog

    text = format_catalog()
    for title in ("generators (model.g.arch", "discriminators", "loss terms", "data sources (data.source"):
        assert title in text
    assert re.search(r"^  srresnet +channels=64, blocks=16", text, re.M)
    assert re.search(r"^  feature_matching \(no options\)$", text, re.M)
    assert re.search(r"^  shards +loader='item', block_size=64, .*num_workers=2$", text, re.M)
    assert re.search(r"^  simulate +preset='deeplense_sr', hr_size=150, sim_device='cpu'$", text, re.M)
