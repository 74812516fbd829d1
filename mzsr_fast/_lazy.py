"""Packages whose public names are imported on first use (PEP 562), so that
importing mzsr_fast, or the command line through it, does not import torch.

A name the package takes from a submodule of the same name (mzsr_fast.adapt is
the function adapt, mzsr_fast.train.pretrain the function pretrain) stays that
name's value when the submodule itself is imported later, as with a plain
`from .adapt import adapt` in the package's __init__.
"""
from __future__ import annotations

import importlib
import sys
import types

__all__ = ["lazy_package"]


class _LazyPackage(types.ModuleType):
    def __getattr__(self, name: str):  # only called for names not yet set
        source = self.__dict__["_lazy_names"].get(name)
        if source is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module = importlib.import_module(f"{self.__name__}.{source}")
        value = module if source == name and name in self.__dict__["_lazy_modules"] else getattr(module, name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value) -> None:
        # the import system sets package.adapt = <module adapt> after importing it
        names = self.__dict__.get("_lazy_names", {})
        if (isinstance(value, types.ModuleType) and names.get(name) == name
                and name not in self.__dict__["_lazy_modules"]):
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__["_lazy_names"]))


def lazy_package(package: str, modules: tuple[str, ...] = (), names: dict[str, str] | None = None) -> None:
    """Make the package `package` (its __name__) import on first use its
    submodules `modules` (as attributes) and `names` (attribute name -> the
    submodule, relative to package, that defines it)."""
    module = sys.modules[package]
    module.__dict__["_lazy_modules"] = frozenset(modules)
    module.__dict__["_lazy_names"] = {**{m: m for m in modules}, **(names or {})}
    module.__class__ = _LazyPackage
