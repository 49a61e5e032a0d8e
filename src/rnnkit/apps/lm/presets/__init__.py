"""Preset configs shipped with rnnkit, used as `rnnkit train --config NAME`: each a JSON file
{"about": "...", "model": {...}, "train": {...}} in this folder."""

from __future__ import annotations

from pathlib import Path

from ....errors import ParameterError

PRESETS = Path(__file__).resolve().parent


def presets() -> list[str]:
    """The names of the preset configs shipped with rnnkit (`--config NAME`)."""
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def preset_path(config: Path) -> Path:
    """`config` itself, or the shipped preset of that name when no such file exists."""
    preset = PRESETS / f"{config}.json"
    if not config.exists() and config.parent == Path(".") and preset.exists():
        return preset
    if not config.exists():
        raise ParameterError("config", f"{str(config)!r} is neither a file nor a preset (presets: {', '.join(presets())})")
    return config
