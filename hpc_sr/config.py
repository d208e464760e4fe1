"""Typed configuration: dataclass schema, YAML files, dotted command-line overrides.

    cfg = load_config("configs/quickstart_cpu.yaml", ["train.lr_g=2e-4", "data.batch_size=32"])

An unknown key or a value of the wrong type raises :class:`ConfigError` naming the key and suggesting
the closest valid one. ``save_config`` writes the resolved config (atomically) as YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hpc_sr.atomic import atomic_write_text
from hpc_sr.errors import HpcSrError


class ConfigError(HpcSrError, ValueError):
    """A config file or override that does not fit the schema."""


def closest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice most like ``name`` (difflib), or None when none is close enough."""
    hint = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return hint[0] if hint else None


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the choice most like ``name``, or ``""``."""
    hint = closest(name, choices, cutoff)
    return f" (did you mean {hint!r}?)" if hint else ""


@dataclass
class DataConfig:
    """Where training pairs come from and how they are batched: the keys every source shares.

    ``source`` picks a registered training source (``hpc-sr config archs`` lists them with their options)
    and ``options`` holds that source's own settings, validated by its options dataclass (like
    ``model.g.options``): ``shards``: loader, block_size, memory_copies, chunk_samples, num_workers;
    ``simulate``: preset, hr_size, sim_device.
    """

    source: str = "shards"  # a registered training source: shards | simulate | ... (hpc_sr.data.streams)
    options: dict[str, Any] = field(default_factory=dict)  # validated by the source's options dataclass
    path: str = "data/demo"  # packed data set (manifest.json inside): trained on by shards; its val split
    scale: int = 2
    batch_size: int = 16  # global batch per optimiser step (all ranks, all accumulation steps)
    patch_size: int = 0  # LR patch side for random aligned crops; 0 = whole images
    augment: bool = True  # random flips and rot90 (lensing images have no preferred orientation)
    val_images: int = 0  # cap on validation images, spread evenly over the val split (0 = the whole split)
    target: Literal["hr", "clean"] = "hr"  # clean: noise-free HR of simulated data (memory|device, simulate)
    # k-fold cross-validation on a packed set (source shards; hpc_sr.data.folds): the manifest's train+val
    # pairs pooled into `folds` seeded folds, validation = fold `fold`, training = the others; test untouched
    folds: int = 0  # 0 or 1 = no cross-validation (the manifest's own train/val split)
    fold: int = 0  # the held-out fold, 0 .. folds-1 (`hpc-sr cv` runs them all)
    train_pairs: int = 0  # 0 = all; N = the first N training pairs in their seeded order (100 inside 300)
    # each pair's LR blur (FWHM in LR pixels of the kernel from HR's PSF to LR's) for model.g.lr_blur_input:
    # "" = none; "data" = the set's own per-pair values (hpc_sr.data.lr_blur); a number = that for every pair
    lr_blur: str = ""


@dataclass
class GeneratorConfig:
    """The generator: a registered arch (hpc_sr.models) and that arch's own options."""

    arch: str = "srresnet"  # srresnet | edsr | rcan | rrdb | swinir | ... (`hpc-sr config archs`)
    options: dict[str, Any] = field(default_factory=dict)  # validated by the arch's options dataclass
    bicubic_skip: bool = True  # output = bicubic(LR) + net(LR); the last layer starts at zero
    lr_consistent: bool = False  # project the output so its s x s block means equal LR exactly
    noise_channels: int = 0  # > 0: a stochastic generator, N(0, 1) noise channels beside LR (samples)
    noise_centred: bool = False  # sample = G(lr,0) + (G(lr,z) - G(lr,-z))/2: centred on G(lr,0) (3 passes)
    # told its LR's blur: one more input channel, each pair's data.lr_blur (one model, sharp and blurred LR)
    lr_blur_input: bool = False


@dataclass
class DiscriminatorConfig:
    """The discriminator (GAN phase only)."""

    arch: str = "srgan"  # srgan | unet
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Generator ``g`` and discriminator ``d``."""

    g: GeneratorConfig = field(default_factory=GeneratorConfig)
    d: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


def default_losses() -> list[dict[str, Any]]:
    """Pixel L1 in both phases, RaGAN in the GAN phase (the v1 defaults)."""
    return [
        {"term": "pixel", "weight": 1.0, "kind": "l1"},
        {"term": "adversarial", "weight": 5e-3, "kind": "ragan"},
    ]


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
    # weighted loss terms of G (hpc_sr.models.losses): {term: NAME, weight: W, <the term's options>}
    losses: list[dict[str, Any]] = field(default_factory=default_losses)
    init_g: str = ""  # start G from these weights (checkpoint dir, run dir or exported G.pt), e.g. SRResNet
    n_d: int = 1  # discriminator steps per generator step
    # samples drawn per LR input in a step (each LR/HR repeated): 0 = auto, 2 for a stochastic generator
    # (model.g.noise_channels > 0; the crps term needs >= 2; 4 = two antithetic pairs if centred), else 1
    samples_per_input: int = 0
    ema_decay: float = 0.999  # 0 = no EMA
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    max_bad_steps: int = 10  # consecutive NaN/inf losses before the run stops
    val_every: int = 500
    # early stopping on val PSNR: stop after this many validations in a row without an improvement of more
    # than early_stop_min_delta dB over the best so far (a final checkpoint; the best one is kept); 0 = off
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
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
class WandbConfig:
    """Weights & Biases beside TensorBoard (rank 0; needs ``pip install -e ".[wandb]"``).

    Offline by default (compute nodes rarely reach the internet): the run is written under
    ``runs/<name>/wandb/`` for ``wandb sync`` from a login node. ``WANDB_MODE`` in the environment overrides
    ``mode``.
    """

    enabled: bool = False
    project: str = "hpc_sr"
    entity: str = ""  # W&B user or team; "" = the account's default entity
    name: str = ""  # display name; "" = log.name
    tags: list[str] = field(default_factory=list)
    mode: Literal["offline", "online", "disabled"] = "offline"


@dataclass
class LogConfig:
    """Where a run writes and how often."""

    name: str = "run"
    runs_dir: str = "runs"
    log_every: int = 20
    image_every: int = 500
    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


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


def coerce_value(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key`` (also for arch options)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            extra = did_you_mean(str(value), [str(c) for c in choices])
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{extra}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return coerce_value(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping of names to values, got {value!r}")
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [v if item is Any else coerce_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(coerce_value(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce_value(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
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
    hint = closest(name, valid, cutoff=0.5)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    extra = f"; did you mean {parent + hint!r}?" if hint else f"; valid keys: {', '.join(sorted(valid))}"
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
            kwargs[name] = coerce_value(key, value, tp)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from nested plain data (old flat keys are migrated, with a warning)."""
    cfg = _build(Config, migrate_legacy(data or {}))
    for i, term in enumerate(cfg.train.losses):  # weights as numbers (YAML 1.1 reads "1e-2" as a string)
        if isinstance(term, dict) and "weight" in term:
            term["weight"] = coerce_value(f"train.losses[{i}].weight", term["weight"], float)
    return cfg


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


def _set_loss_term(terms: list[Any], name: str, rest: list[str], value: Any, text: str) -> None:
    """``train.losses.<term>.<key>=value``: set a key of the term named ``name`` (added when missing)."""
    if len(rest) != 1:
        raise ConfigError(
            f"override {text!r}: use train.losses.<term>.<key>=value (e.g. train.losses.pixel.weight=2)"
        )
    for term in terms:
        if isinstance(term, dict) and term.get("term") == name:
            term[rest[0]] = value
            return
    terms.append({"term": name, "weight": 1.0, rest[0]: value})


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to nested plain data, checking keys against the schema.

    Inside a mapping-typed key (``model.g.options``) any key is accepted here and checked later by the arch's
    options; ``train.losses.<term>.<key>=value`` sets one key of one loss term (adding the term if missing).
    Old flat keys (``model.channels``, ``train.adv_weight``, ``data.loader``, ...) are translated with a
    deprecation warning.
    """
    data = copy.deepcopy(migrate_legacy(data or {}))
    for text in overrides:
        path, value = parse_override(text)
        path = _legacy_override_path(path)
        cls: type = Config
        node = data
        for i, part in enumerate(path):
            hints = _hints(cls)
            key = ".".join(path[: i + 1])
            if part not in hints:
                raise _unknown(key, part, list(hints))
            tp = hints[part]
            last = i == len(path) - 1
            origin = typing.get_origin(tp)
            if dataclasses.is_dataclass(tp):
                if last:
                    raise ConfigError(f"override {text!r}: {key!r} is a section; set one of its keys")
                sub = node.get(part)
                node[part] = dict(sub) if isinstance(sub, dict) else {}
                node = node[part]
                cls = tp
            elif last:
                node[part] = value
            elif origin is dict:
                sub = node.get(part)
                node[part] = dict(sub) if isinstance(sub, dict) else {}
                inner = node[part]
                for sub_key in path[i + 1 : -1]:
                    inner[sub_key] = dict(inner.get(sub_key) or {})
                    inner = inner[sub_key]
                inner[path[-1]] = value
                break
            elif key == "train.losses":
                if "losses" not in node:
                    node["losses"] = default_losses()
                _set_loss_term(node["losses"], path[i + 1], path[i + 2 :], value, text)
                break
            else:
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
    return data


# ----------------------------------------------------------------------------------------------- legacy keys
# v1 configs (and the configs stored in v1 checkpoints) used flat model/loss keys, v2 flat data keys that are
# now one source's own options; they load with a FutureWarning naming the old and the new key.
LEGACY_MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "channels": ("g", "options", "channels"),
    "blocks": ("g", "options", "blocks"),
    "batch_norm": ("g", "options", "batch_norm"),
    "res_scale": ("g", "options", "res_scale"),
    "bicubic_skip": ("g", "bicubic_skip"),
    "d_channels": ("d", "options", "channels"),
    "d_blocks": ("d", "options", "blocks"),
    "d_spectral_norm": ("d", "options", "spectral_norm"),
}
LEGACY_LOSS_KEYS: dict[str, tuple[str, str]] = {
    "pixel_loss": ("pixel", "kind"),
    "pixel_weight": ("pixel", "weight"),
    "adv_loss": ("adversarial", "kind"),
    "adv_weight": ("adversarial", "weight"),
    "feature_weight": ("feature_matching", "weight"),
    "flux_weight": ("flux", "weight"),
    "ssim_weight": ("ssim", "weight"),
}
# data.<key> -> the source whose data.options.<key> it is now
LEGACY_DATA_KEYS: dict[str, str] = {
    "loader": "shards",
    "block_size": "shards",
    "memory_copies": "shards",
    "chunk_samples": "shards",
    "num_workers": "shards",
    "preset": "simulate",
    "hr_size": "simulate",
    "sim_device": "simulate",
}
# flat data keys every resolved v1 and v2 config holds (written by save_config, stored in checkpoints)
RESOLVED_DATA_KEYS = ("preset", "hr_size", "sim_device", "loader", "block_size", "num_workers")


def _warn_legacy(old: str, new: str, era: str = "v1") -> None:
    warnings.warn(f"deprecated {era} config keys {old}: read as {new}", FutureWarning, stacklevel=4)


def _legacy_override_path(path: list[str]) -> list[str]:
    era = "v1"
    if len(path) == 2 and path[0] == "model" and path[1] in LEGACY_MODEL_KEYS:
        new = ["model", *LEGACY_MODEL_KEYS[path[1]]]
    elif len(path) == 2 and path[0] == "train" and path[1] in LEGACY_LOSS_KEYS:
        new = ["train", "losses", *LEGACY_LOSS_KEYS[path[1]]]
    elif len(path) == 2 and path[0] == "data" and path[1] in LEGACY_DATA_KEYS:
        new, era = ["data", "options", path[1]], "v1/v2"  # checked by the source's options, as the new form
    else:
        return path
    _warn_legacy(".".join(path), ".".join(new), era)
    return new


def migrate_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Translate flat keys: v1 model/loss keys into ``model.g``/``model.d`` and ``train.losses``, v2 data
    keys into ``data.options`` (warns)."""
    data = _migrate_data(data)
    model, train = data.get("model"), data.get("train")
    old_model = [k for k in LEGACY_MODEL_KEYS if isinstance(model, dict) and k in model]
    old_train = [k for k in LEGACY_LOSS_KEYS if isinstance(train, dict) and k in train]
    if not old_model and not old_train:
        return data
    data = copy.deepcopy(data)
    if old_model:
        model = data["model"]
        for k in old_model:
            node = model
            *parents, leaf = LEGACY_MODEL_KEYS[k]
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = model.pop(k)
        _warn_legacy(
            ", ".join(f"model.{k}" for k in old_model),
            ", ".join("model." + ".".join(LEGACY_MODEL_KEYS[k]) for k in old_model),
        )
    if old_train:
        train = data["train"]
        if "losses" in train:
            raise ConfigError(f"train: give either train.losses or the old keys {old_train}, not both")
        old = {k: train.pop(k) for k in old_train}
        _warn_legacy(", ".join(f"train.{k}" for k in old_train), "terms of train.losses")
        pixel = {"term": "pixel", "weight": old.get("pixel_weight", 1.0), "kind": old.get("pixel_loss", "l1")}
        adv = {
            "term": "adversarial",
            "weight": old.get("adv_weight", 5e-3),
            "kind": old.get("adv_loss", "ragan"),
        }
        terms = [pixel, adv]
        optional = (("feature_weight", "feature_matching"), ("flux_weight", "flux"), ("ssim_weight", "ssim"))
        for k, name in optional:
            if float(old.get(k, 0.0) or 0.0) > 0:
                terms.append({"term": name, "weight": old[k]})
        train["losses"] = terms
    return data


def _migrate_data(data: dict[str, Any]) -> dict[str, Any]:
    """Flat ``data.<key>`` of the chosen source -> ``data.options.<key>``. A key of another source is a
    ConfigError naming it, except in a resolved config (every key stored), where it is dropped."""
    section = data.get("data")
    old = [k for k in LEGACY_DATA_KEYS if isinstance(section, dict) and k in section]
    if not old:
        return data
    data = copy.deepcopy(data)
    section = data["data"]
    source = str(section.get("source", "shards"))
    resolved = all(k in section for k in RESOLVED_DATA_KEYS)
    options = section.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"data.options: expected a mapping of names to values, got {options!r}")
    moved, dropped = [], []
    for k in old:
        owner, value = LEGACY_DATA_KEYS[k], section.pop(k)
        if owner == source:
            options[k] = value
            moved.append(k)
        elif resolved:
            dropped.append(k)
        else:
            raise ConfigError(
                f"data.{k}={value!r} is a setting of data.source={owner} (now data.options.{k} there), "
                f"not of data.source={source}"
            )
    section["options"] = options
    new = ", ".join(f"data.options.{k}" for k in moved) or "nothing"
    if dropped:
        new += f" (ignored: {', '.join(dropped)}, not settings of source {source!r})"
    _warn_legacy(", ".join(f"data.{k}" for k in old), new, "v1/v2")
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
