"""Model directories written by earlier versions of rnnkit still load and answer as they did."""

import json
from pathlib import Path

import pytest

from rnnkit import load_model, predict_next

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_version_1_model_directory_loads_and_predicts_as_when_it_was_saved():
    # written by rnnkit 0.1.0 before config.json named a "kind"; expected.json holds what it said then
    directory = FIXTURES / "lm-v1"
    expected = json.loads((directory / "expected.json").read_text())
    model, tokenizer = load_model(directory)
    predictions, _ = predict_next(model, tokenizer, expected["prompt"], top_k=3)
    assert [p.token for p in predictions] == [token for token, _ in expected["top3"]]
    assert [p.prob for p in predictions] == pytest.approx([prob for _, prob in expected["top3"]], rel=1e-5)
