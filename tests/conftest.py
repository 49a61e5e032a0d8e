"""Fixtures shared by the tests."""

from pathlib import Path

import pytest
from helpers import animal_corpus


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return animal_corpus(tmp_path / "animals.txt", 600)
