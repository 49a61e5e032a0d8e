"""Fixtures shared by the tests."""

from pathlib import Path

import pytest
import torch
from helpers import animal_corpus

import rnnkit.cli


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: more threads only add overhead, and spin while the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli():
    return rnnkit.cli.main


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return animal_corpus(tmp_path / "animals.txt", 600)
