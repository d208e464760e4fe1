"""One registry idiom: name -> (class or builder, typed options dataclass), filled where each is defined.

    GENERATORS = Registry("generator", package="hpc_sr.models", noun="arch", attr="arch")

    @GENERATORS.register("rcan", RCANOptions)
    class RCAN(SRGenerator): ...

    entry = GENERATORS.get("rcan", key="model.g.arch")       # ConfigError: the key, did you mean, valid names
    opts = entry.make_options({"groups": 5}, "model.g.options")  # RCANOptions(groups=5, ...)

Every module of ``package`` (subpackages too) is imported the first time a registry is read, so adding a
thing is one new file (no list to edit). The generators, discriminators, loss terms (hpc_sr.models) and
training data sources (hpc_sr.data) are registries of this kind; ``hpc-sr config archs`` prints their
:meth:`Registry.listing`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hpc_sr.config import ConfigError, closest, coerce_value, did_you_mean

T = TypeVar("T")
D = TypeVar("D")

_LOADED: set[str] = set()


def load_package(name: str) -> None:
    """Import every module of package ``name`` and its subpackages once (each registers what it defines)."""
    if name in _LOADED:
        return
    pkg = importlib.import_module(name)
    for info in pkgutil.walk_packages(pkg.__path__, f"{name}."):
        importlib.import_module(info.name)
    _LOADED.add(name)


@dataclass
class NoOptions:
    """The options of an entry that has none."""


def make_options(options_cls: type, values: dict[str, Any] | None, key: str) -> Any:
    """The options dataclass filled from ``values``; unknown names and wrong types name ``key.<name>``."""
    hints = typing.get_type_hints(options_cls)
    kwargs = {}
    for name, value in dict(values or {}).items():
        if name not in hints:
            hint = closest(str(name), hints, cutoff=0.5)
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"unknown option {key}.{name}{extra} (valid: {', '.join(sorted(hints)) or 'none'})"
            )
        kwargs[name] = coerce_value(f"{key}.{name}", value, hints[name])
    try:
        return options_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _fields(options_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(options_cls)}


def options_summary(options_cls: type) -> str:
    """``name=default, ...`` of an options dataclass (``(no options)`` when it has none)."""
    parts = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parts.append(f"{f.name}={default!r}")
    return ", ".join(parts) or "(no options)"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, class (or builder) and options dataclass."""

    name: str
    cls: T
    options: type

    def make_options(self, values: dict[str, Any] | None, key: str) -> Any:
        """This entry's options filled from plain ``values`` (errors name ``key.<name>``)."""
        return make_options(self.options, values, key)


class Registry(Generic[T]):
    """Things of one kind by name, each with its options dataclass.

    ``kind`` names a thing in messages (``generator``), ``noun`` what the config key picks (``arch``; the kind
    by default), ``package`` the package imported on first read (None: nothing to import), ``attr`` an
    attribute set to the registered name on each thing (``cls.arch``).
    """

    def __init__(
        self, kind: str, package: str | None = None, noun: str | None = None, attr: str | None = None
    ) -> None:
        self.kind, self.package, self.noun, self.attr = kind, package, noun or kind, attr
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, options: type = NoOptions) -> Callable[[D], D]:
        """Decorator: register a class (or builder) under ``name`` with its options dataclass."""
        if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
            raise TypeError(f"{self.kind} {name!r}: options must be a dataclass, got {options!r}")

        def wrap(obj: D) -> D:
            old = self._entries.get(name)
            if old is not None and old.cls is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({old.cls} and {obj})")
            self._entries[name] = Entry(name, obj, options)  # type: ignore[arg-type]
            if self.attr:
                setattr(obj, self.attr, name)
            return obj

        return wrap

    def _all(self) -> dict[str, Entry[T]]:
        if self.package:
            load_package(self.package)
        return self._entries

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._all())

    def get(self, name: str, key: str) -> Entry[T]:
        """The entry ``name``; a ConfigError naming ``key``, the closest name and the valid ones otherwise."""
        entries = self._all()
        if name not in entries:
            raise ConfigError(
                f"{key}: unknown {self.noun} {name!r}{did_you_mean(name, entries)}; "
                f"valid: {', '.join(sorted(entries))}"
            )
        return entries[name]

    def options(self, name: str, values: dict[str, Any] | None, key: str, options_key: str) -> Any:
        """The typed options of entry ``name`` (looked up as :meth:`get` with ``key``) from plain ``values``;
        errors name ``options_key.<option>``, and an option of other entries says whose it is."""
        entry = self.get(name, key)
        valid = _fields(entry.options)
        for option in dict(values or {}):
            owners = [n for n, e in sorted(self._entries.items()) if option in _fields(e.options) - valid]
            if owners:
                whose = ", ".join(map(repr, owners))
                raise ConfigError(
                    f"unknown option {options_key}.{option}: an option of {self.noun} {whose}, not of "
                    f"{name!r} (valid: {', '.join(sorted(valid)) or 'none'})"
                )
        return entry.make_options(values, options_key)

    def __getitem__(self, name: str) -> Entry[T]:
        return self._all()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._all())

    def listing(self) -> list[str]:
        """One line per entry: its name and its options with their defaults."""
        names = self.names()
        width = max([12, *map(len, names)])
        return [f"  {n:<{width}} {options_summary(self._entries[n].options)}" for n in names]
