"""The command's entry point: help, version, one-line usage errors."""

import subprocess
import sys

import pytest

import rnnkit
from rnnkit.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rnnkit {rnnkit.__version__}"
    assert main([]) == 0
    assert "usage: rnnkit" in capsys.readouterr().out


def test_unknown_command_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "rnnkit", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'frobnicate'" in result.stderr
