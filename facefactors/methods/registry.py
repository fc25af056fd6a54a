"""Method registry: short name -> class. ``facefactors methods`` lists it."""
from __future__ import annotations

import importlib
import pkgutil

from facefactors.errors import FacefactorsError

_REGISTRY: dict[str, type] = {}
_NOT_METHODS = {"base", "registry"}


def register(cls):
    """Class decorator: make a Method available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    """Import every module of ``facefactors.methods``: a new method is one new file."""
    import facefactors.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"facefactors.methods.{info.name}")


def available() -> dict[str, type]:
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type:
    methods = available()
    if name not in methods:
        raise FacefactorsError(f"unknown method {name!r}; available: {', '.join(methods)}")
    return methods[name]
