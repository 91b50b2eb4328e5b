"""Griffe extension for the API reference: a signature shows the values of its defaults.

Griffe reads signatures from the source, so ``gradcheck(..., rtol: float = REF_RTOL)``
would show the constant's name, which tells a reader nothing. Once the object tree is
built, every default that is a name (``REF_RTOL``, ``_solvers.DEFAULT_ITERS``) is looked
up in the imported module and replaced by the value's ``repr`` when that value is a plain
number, string, boolean, ``None`` or a tuple of those; anything else keeps its name.
Loaded by mkdocstrings (``extensions:`` in ``mkdocs.yml``).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

NAME = re.compile(r"[A-Za-z_][\w.]*")
PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN)


def _value(module: str, expression: str) -> Any:
    namespace = vars(importlib.import_module(module))
    head, *rest = expression.split(".")
    value = namespace[head]
    for part in rest:
        value = getattr(value, part)
    return value


def _functions(obj: griffe.Object):
    for member in obj.members.values():
        if member.is_alias:
            continue
        if member.is_function:
            yield member
        elif member.is_class or member.is_module:
            yield from _functions(member)


class DefaultValues(griffe.Extension):
    """Replace name defaults by their values (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # noqa: ARG002
        for func in _functions(pkg):
            for param in func.parameters:
                text = str(param.default) if param.default is not None else ""
                if not NAME.fullmatch(text) or text in ("None", "True", "False"):
                    continue
                try:
                    value = _value(func.module.path, text)
                except (ImportError, KeyError, AttributeError):
                    continue
                if _plain(value):
                    param.default = repr(value)
