"""Options declared once, on a dataclass field: its flag, help text, help group and limits.

`option(default, help, group, ...)` makes a dataclass field that is also a command-line option. The same
declaration gives the `ssrr pretrain` option (cli/pretrain.py builds its parameters from it), the reverse
mapping from a value to flags (`ssrr reproduce` launching `ssrr pretrain`), and the check of a value
(`check_fields`): a `Literal[...]` field holds one of its choices, a number sits inside its limit, and a field
typed `X | None` may be None, which means "not given" (the preset's or the method's default applies).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ssrr.errors import SsrrError
from ssrr.options import Limit, flag, limit_of

GROUPS = ("data", "model", "method", "optimisation", "run")  # the help panels of `ssrr pretrain --help`
Group = Literal["data", "model", "method", "optimisation", "run"]


@dataclass(frozen=True)
class Declared:
    """How a field appears on the command line."""

    help: str
    group: Group
    flag: str | None = None  # default: --field-name
    negative: bool = True  # booleans: `--x/--no-x`; False: `--x` alone (off unless typed)
    limit: Limit | None = None  # numbers: the range of a typed value (default: ssrr.options.LIMITS)
    parse: Callable[[str], Any] | None = None  # the command line's text -> the value (`--time-budget 15m`)
    show: Callable[[Any], str] | None = None  # the value -> the command line's text (the reverse of `parse`)


def option(default: Any, help: str, group: Group, **how: Any) -> Any:
    """A dataclass field that is also a command-line option (see `Declared` for `how`)."""
    metadata = {"option": Declared(help, group, **how)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def declared(item: Field[Any]) -> Declared | None:
    """A field's declaration, or None for a field that is no option."""
    found = item.metadata.get("option")
    return found if isinstance(found, Declared) else None


def flag_of(item: Field[Any]) -> str:
    """The option's long flag: `--batch`, `--time-budget`."""
    how = declared(item)
    return how.flag if how is not None and how.flag else flag(item.name)


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (its module uses `from __future__ import annotations`)."""
    return get_type_hints(cls)


def optional(hint: Any) -> bool:
    """Whether a hint admits None (`int | None`)."""
    return type(None) in get_args(hint) and get_origin(hint) in (Union, types.UnionType)


def base_type(hint: Any) -> Any:
    """`int | None` -> int; other hints unchanged."""
    if optional(hint):
        rest = [arg for arg in get_args(hint) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def choices(hint: Any) -> tuple[str, ...] | None:
    """The values of a `Literal[...]` hint (or of `Literal[...] | None`), else None."""
    hint = base_type(hint)
    return tuple(get_args(hint)) if get_origin(hint) is Literal else None


def fits(value: Any, hint: Any) -> bool:
    """Whether a value (as read from JSON) has the hint's type; ints pass as floats, a Literal as its base."""
    if value is None:
        return optional(hint)
    hint = base_type(hint)
    if choices(hint) is not None:
        return isinstance(value, str)
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if get_origin(hint) is list:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if get_origin(hint) is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_value(item: Field[Any], hint: Any, value: Any) -> None:
    """One field's value against its declaration: its type, its choices, its limit; one line naming the flag."""
    name = flag_of(item)
    if not fits(value, hint):
        raise SsrrError(f"{name} must be {_kind(hint)}, got {value!r}")
    if value is None:
        return
    allowed = choices(hint)
    if allowed is not None and value not in allowed:
        raise SsrrError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        how = declared(item)
        limit = how.limit if how is not None and how.limit is not None else limit_of(item.name, value)
        limit.check(name, value)


def check_fields(obj: Any) -> None:
    """`check_value` on every declared field of a dataclass instance."""
    hints = field_types(type(obj))
    for item in fields(obj):
        if declared(item) is not None:
            check_value(item, hints[item.name], getattr(obj, item.name))


def _kind(hint: Any) -> str:
    allowed = choices(hint)
    if allowed is not None:
        return "one of " + ", ".join(allowed)
    base = base_type(hint)
    word = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(base, str(base))
    return f"{word} (or not given)" if optional(hint) else word
