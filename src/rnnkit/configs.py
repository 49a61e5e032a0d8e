"""Frozen dataclass configs that travel as JSON (config.json, --config files)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="JSONConfig")


class JSONConfig:
    """to_dict / from_dict for a dataclass; from_dict names the fields it does not know."""

    what: ClassVar[str] = "config"  # how error messages name it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.what} field(s): {', '.join(unknown)}")
        return cls(**data)
