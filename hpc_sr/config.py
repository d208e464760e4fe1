"""Typed configuration: dataclass schema, YAML files, dotted command-line overrides.

    cfg = load_config("configs/quickstart_cpu.yaml", ["train.lr_g=2e-4", "data.batch_size=32"])

An unknown key or a value of the wrong type raises :class:`ConfigError` naming the key and suggesting
the closest valid one. ``save_config`` writes the resolved config (atomically) as YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hpc_sr.atomic import atomic_write_text
from hpc_sr.errors import HpcSrError


class ConfigError(HpcSrError, ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class DataConfig:
    """Where training pairs come from and how they are batched."""

    source: Literal["shards", "simulate"] = "shards"
    path: str = "data/demo"  # shard directory (manifest.json inside) for source=shards
    preset: str = "deeplense_sr"  # simulator preset for source=simulate
    hr_size: int = 150  # HR image side for source=simulate
    scale: int = 2
    batch_size: int = 16  # global batch per optimiser step (all ranks, all accumulation steps)
    patch_size: int = 0  # LR patch side for random aligned crops; 0 = whole images
    augment: bool = True  # random flips and rot90 (lensing images have no preferred orientation)
    num_workers: int = 2
    loader: Literal["item", "block", "memory"] = "item"
    block_size: int = 64  # items per contiguous read for loader=block
    val_images: int = 0  # cap on validation images (0 = the whole val split)
    sim_device: str = (
        "cpu"  # where source=simulate generates batches ("cpu", "cuda", "auto" = training device)
    )


@dataclass
class ModelConfig:
    """SRResNet generator and SRGAN discriminator."""

    channels: int = 64
    blocks: int = 16
    batch_norm: bool = False
    res_scale: float = 0.1
    bicubic_skip: bool = True  # output = bicubic(LR) + net(LR) (global skip); False = plain SRResNet
    d_channels: int = 64
    d_blocks: int = 4  # strided conv pairs in the discriminator
    d_spectral_norm: bool = False


@dataclass
class TrainConfig:
    """The iteration-based loop: pretrain G (pixel loss), then the GAN phase."""

    seed: int = 0
    steps: int = 1000  # total optimiser steps (pretrain + GAN)
    pretrain_steps: int = 1000  # steps of phase 1 (pixel loss only); GAN from then on
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    grad_accum: int = 1
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    pixel_loss: Literal["l1", "mse"] = "l1"
    pixel_weight: float = 1.0
    adv_loss: Literal["bce", "lsgan", "ragan"] = "ragan"
    adv_weight: float = 5e-3
    feature_weight: float = 0.0  # discriminator feature matching
    flux_weight: float = 0.0  # relative total-flux error of SR vs HR
    ssim_weight: float = 0.0  # 1 - SSIM
    init_g: str = ""  # start G from these weights (checkpoint dir, run dir or exported G.pt), e.g. SRResNet
    n_d: int = 1  # discriminator steps per generator step
    ema_decay: float = 0.999  # 0 = no EMA
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    max_bad_steps: int = 10  # consecutive NaN/inf losses before the run stops
    val_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3


@dataclass
class DistConfig:
    """Distributed back-end."""

    backend: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 0
    deepspeed_config: str = ""  # optional JSON to start from (configs/deepspeed/...)
    timeout_s: int = 600  # collective timeout: a dead rank fails the job instead of hanging it
    find_unused_parameters: bool = False


@dataclass
class SlurmConfig:
    """Defaults for `hpc-sr submit` (command-line flags override them)."""

    partition: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    time: str = "01:00:00"
    account: str = ""
    qos: str = ""
    constraint: str = ""
    mem: str = ""
    max_requeues: int = 3


@dataclass
class LogConfig:
    """Where a run writes and how often."""

    name: str = "run"
    runs_dir: str = "runs"
    log_every: int = 20
    image_every: int = 500
    tensorboard: bool = True


@dataclass
class Config:
    """The whole experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.log.runs_dir) / self.log.name


# ----------------------------------------------------------------------------------------------- coercion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{extra}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, name: str, valid: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    extra = f"; did you mean {parent + hint[0]!r}?" if hint else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key {key!r}{extra}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise _unknown(key, str(name), list(hints))
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{key}.")
        else:
            kwargs[name] = _coerce(key, value, tp)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from nested plain data."""
    return _build(Config, data or {})


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested data (tuples as lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


# ----------------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value parsed as YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value: {exc}") from exc
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to nested plain data, checking keys against the schema."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for text in overrides:
        path, value = parse_override(text)
        cls: type = Config
        node = data
        for i, part in enumerate(path):
            hints = _hints(cls)
            key = ".".join(path[: i + 1])
            if part not in hints:
                raise _unknown(key, part, list(hints))
            tp = hints[part]
            last = i == len(path) - 1
            if dataclasses.is_dataclass(tp):
                if last:
                    raise ConfigError(f"override {text!r}: {key!r} is a section; set one of its keys")
                sub = node.get(part)
                node[part] = dict(sub) if isinstance(sub, dict) else {}
                node = node[part]
                cls = tp
            elif last:
                node[part] = value
            else:
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
    return data


# ----------------------------------------------------------------------------------------------- files
def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
    try:
        return config_from_dict(apply_overrides(data, overrides or []))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, dump_config(cfg))


def flatten(cfg: Config | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.lr_g": 2e-4, ...}`` for hparams tables and run comparisons."""
    data = config_to_dict(cfg) if isinstance(cfg, Config) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
