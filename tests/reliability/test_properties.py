"""Property-based tests (hypothesis): config overrides and YAML round trips over the whole schema, unknown
keys always rejected with the key named, and the npy/FITS pair readers on random images."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Literal

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hpc_sr.config import Config, ConfigError, flatten, load_config, save_config
from hpc_sr.data.sources import open_source


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaves(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every scalar key of the schema (nested sections walked; free-form mappings and lists left out: the arch
    options and loss terms are validated by their registries, tested in tests/test_config.py)."""
    out: dict[str, Any] = {}
    for k, t in _hints(cls).items():
        if dataclasses.is_dataclass(t):
            out.update(_leaves(t, f"{prefix}{k}."))
        elif typing.get_origin(t) not in (dict, list):
            out[f"{prefix}{k}"] = t
    return out


SCHEMA: dict[str, Any] = _leaves(Config)

_floats = st.floats(allow_nan=False, allow_infinity=False)
_strings = st.from_regex(r"[A-Za-z_/][A-Za-z0-9_./-]{0,12}", fullmatch=True).filter(
    lambda s: yaml.safe_load(s) == s
)  # a string YAML reads back as itself (not true, null, 1e3, ...)


def value_strategy(tp: Any) -> st.SearchStrategy[Any]:
    if typing.get_origin(tp) is Literal:
        return st.sampled_from(typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return st.tuples(*(value_strategy(a) for a in typing.get_args(tp)))
    return {bool: st.booleans(), int: st.integers(-(10**12), 10**12), float: _floats, str: _strings}[tp]


def as_override_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(as_override_text(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


assignments = st.lists(st.sampled_from(sorted(SCHEMA)), min_size=1, max_size=8, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: value_strategy(SCHEMA[k]) for k in keys})
)


def test_schema_strategies_cover_every_key() -> None:
    for key, tp in SCHEMA.items():
        try:
            strategy = value_strategy(tp)
        except KeyError:  # a config field of a type the property tests cannot generate yet
            pytest.fail(f"{key}: no hypothesis strategy for its type {tp!r}; extend value_strategy")
        assert isinstance(strategy, st.SearchStrategy), key


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=assignments)
def test_overrides_set_exactly_their_keys_and_round_trip_through_yaml(values: dict[str, Any]) -> None:
    cfg = load_config(None, [f"{k}={as_override_text(v)}" for k, v in values.items()])
    flat, default = flatten(cfg), flatten(Config())
    for key, value in values.items():
        want = list(value) if isinstance(value, tuple) else value
        assert flat[key] == want and type(flat[key]) is type(want), key
    assert {k: v for k, v in flat.items() if k not in values} == {
        k: v for k, v in default.items() if k not in values
    }
    with TemporaryDirectory() as tmp:
        save_config(cfg, Path(tmp) / "c.yaml")
        assert load_config(Path(tmp) / "c.yaml") == cfg  # the resolved config reloads to the same Config
        assert load_config(Path(tmp) / "c.yaml", []) == load_config(
            None, [f"{k}={as_override_text(v)}" for k, v in values.items()]
        )


_names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)


@settings(max_examples=80, deadline=None)
@given(
    section=st.one_of(st.sampled_from(sorted(_hints(Config))), _names),
    name=_names,
    value=st.one_of(st.integers(), _strings, st.booleans()),
)
def test_unknown_keys_are_always_rejected_naming_the_key(section: str, name: str, value: Any) -> None:
    sections = _hints(Config)
    bad = section if section not in sections else f"{section}.{name}"
    assume(section not in sections or name not in _hints(sections[section]))
    with pytest.raises(ConfigError, match=rf"unknown config key '{bad}'"):
        load_config(None, [f"{section}.{name}={as_override_text(value)}"])
    with TemporaryDirectory() as tmp:  # the same key in a YAML file
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump({section: {name: value}}))
        with pytest.raises(ConfigError, match=rf"c\.yaml: unknown config key '{bad}'"):
            load_config(path)


_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int16, np.uint8, np.uint16, np.int32])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["deeplense", "fits"]),
    n=st.integers(1, 3),
    lr_h=st.integers(1, 6),
    lr_w=st.integers(1, 6),
    scale=st.integers(1, 3),
    dtype=_DTYPES,
    lead=st.booleans(),
    big_endian=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_npy_and_fits_readers_return_the_written_pixels(
    kind: str, n: int, lr_h: int, lr_w: int, scale: int, dtype: type, lead: bool, big_endian: bool, seed: int
) -> None:
    assume(not (kind == "fits" and dtype is np.float16))  # FITS has no 16-bit float type
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype).newbyteorder(">" if big_endian else "<")
    written = {}
    with TemporaryDirectory() as tmp:
        src = Path(tmp)
        for d in ("HR", "LR"):
            (src / d).mkdir()
        for i in range(n):
            hr = (rng.random((lr_h * scale, lr_w * scale)) * 200).astype(dt)
            lr = (rng.random((lr_h, lr_w)) * 200).astype(dt)
            written[f"p{i}"] = (hr, lr)
            for d, img in (("HR", hr), ("LR", lr)):
                img = img[None] if lead else img
                if kind == "deeplense":
                    np.save(src / d / f"p{i}.npy", img)
                else:
                    from astropy.io import fits

                    fits.PrimaryHDU(img).writeto(src / d / f"p{i}.fits")
        pairs = list(open_source(kind, src, scale=scale))
    assert [p.name for p in pairs] == sorted(written)
    for p in pairs:
        hr, lr = written[p.name]
        assert p.hr.dtype == p.lr.dtype == np.float32
        assert p.hr.shape == (1, *hr.shape) and p.lr.shape == (1, *lr.shape)
        np.testing.assert_array_equal(p.hr[0], hr.astype(np.float32))
        np.testing.assert_array_equal(p.lr[0], lr.astype(np.float32))
