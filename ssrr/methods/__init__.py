"""Pretraining methods, registered by name: `ssrr pretrain --method NAME`."""

from ssrr.methods import deepcluster, infomax, relational, rotation, simclr, supervised  # noqa: F401  (registers)
from ssrr.methods.base import METHODS, Method, StepOutput, method_class, register

__all__ = ["METHODS", "Method", "StepOutput", "method_class", "register"]
