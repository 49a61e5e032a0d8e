"""Frozen dataclass configs that travel as JSON (config.json, --config files), checked when built.

A config checks its fields in `__post_init__` with `FieldChecks`, so that a bad value, from Python,
a --config file or a config.json read back, is a `ParameterError` naming the field, never a
crash deeper down.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from .errors import ParameterError

C = TypeVar("C", bound="JSONConfig")
SEED_LIMIT = 2**63  # seeds are in [0, SEED_LIMIT): what torch.manual_seed and a Generator take


class JSONConfig:
    """to_dict / from_dict for a dataclass; from_dict names the fields it does not know."""

    what: ClassVar[str] = "config"  # how error messages name it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ParameterError(cls.what, f"must be a JSON object, got {type(data).__name__}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        unknown = sorted(set(data) - {f.name for f in fields})
        if unknown:
            raise ParameterError(unknown[0], f"is not a {cls.what} field (unknown: {', '.join(unknown)})")
        required = dataclasses.MISSING
        missing = [f.name for f in fields if f.init and f.name not in data
                   and f.default is required and f.default_factory is required]
        if missing:
            raise ParameterError(missing[0], f"is missing from the {cls.what}")
        return cls(**data)


def check_positive_integer(name: str, value: object) -> None:
    """ParameterError unless `value` is an int >= 1 (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(name, f"must be a positive integer, got {value!r}")


def check_seed(value: object) -> None:
    """ParameterError unless `value` is a seed a generator takes: an int in [0, SEED_LIMIT)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ParameterError("seed", f"must be an integer >= 0 and < {SEED_LIMIT}, got {value!r}")


class FieldChecks:
    """Type and range checks of a config's fields, each failure a ParameterError naming the field."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def _get(self, name: str) -> Any:
        return getattr(self.config, name)

    def integer(self, name: str, minimum: int | None = None, optional: bool = False, maximum: int | None = None) -> None:
        """An int from `minimum` to `maximum`."""
        value = self._get(name)
        if optional and value is None:
            return
        low = minimum is not None and isinstance(value, int) and value < minimum
        high = maximum is not None and isinstance(value, int) and value > maximum
        if isinstance(value, bool) or not isinstance(value, int) or low or high:
            bounds = "" if minimum is None else f" >= {minimum}"
            bounds += "" if maximum is None else f" and <= {maximum}"
            raise ParameterError(name, f"must be an integer{bounds}, got {value!r}")

    def seed(self) -> None:
        check_seed(self._get("seed"))

    def number(self, name: str, positive: bool = False, optional: bool = False) -> None:
        value = self._get(name)
        if optional and value is None:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (positive and value == 0):
            raise ParameterError(name, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")

    def fraction(self, name: str, optional: bool = False) -> None:
        """A probability of dropping: in [0, 1)."""
        value = self._get(name)
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ParameterError(name, f"must be a number in [0, 1), got {value!r}")

    def choice(self, name: str, choices: Sequence[str]) -> None:
        if self._get(name) not in choices:
            raise ParameterError(name, f"must be one of {', '.join(choices)}, got {self._get(name)!r}")

    def boolean(self, name: str) -> None:
        if not isinstance(self._get(name), bool):
            raise ParameterError(name, f"must be true or false, got {self._get(name)!r}")
