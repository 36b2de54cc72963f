"""Pretraining methods, registered by name: `ssrr pretrain --method NAME`.

Every module of this package is imported here, so a method registers itself (`@register`) by existing: adding one
is one file (and its test), with no list to edit."""

import importlib
import pkgutil

from ssrr.methods.base import METHODS, Method, StepOutput, method_class, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registers its methods

__all__ = ["METHODS", "Method", "StepOutput", "method_class", "register"]
