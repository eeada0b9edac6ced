"""Registries for the plugin kinds: intakes, collectors, actions (mitigations) and sinks.

A plugin is a class with a unique `name`, registered with a decorator in its own module:

    @collectors.register
    class PodsCollector(Collector[PodsParams]):
        name = "kubernetes.pods"

A registry imports every module of its package the first time it is asked for a name, so adding a
plugin is adding one file; the package's machinery modules (the interface, runners, the guard), named
when the registry is made, are left to whoever needs them, so loading the plugins stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar, Generic, Protocol, TypeVar


class Named(Protocol):
    name: ClassVar[str]


T = TypeVar("T", bound=type[Named])


class UnknownPlugin(KeyError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.message = f"unknown {kind} {name!r} (known: {', '.join(known) or 'none'})"

    def __str__(self) -> str:
        return self.message


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, machinery: tuple[str, ...] = ("base",)) -> None:
        self.kind = kind
        self.package = package
        self.machinery = machinery
        self._plugins: dict[str, T] = {}
        self._loaded = False

    def register(self, plugin: T) -> T:
        name = plugin.name
        existing = self._plugins.get(name)
        if existing is not None and existing is not plugin:
            raise ValueError(f"{self.kind} {name!r} is registered twice: {existing} and {plugin}")
        self._plugins[name] = plugin
        return plugin

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if module.name in self.machinery:
                continue
            importlib.import_module(f"{self.package}.{module.name}")

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._plugins[name]
        except KeyError:
            raise UnknownPlugin(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._plugins)
