"""Model directories written by earlier versions of rnnkit still load and answer as they did."""

import json
import shutil
from pathlib import Path

import pytest

from rnnkit import load_model, predict_next
from rnnkit.errors import RnnkitError

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_version_1_model_directory_loads_and_predicts_as_when_it_was_saved():
    # written by rnnkit 0.1.0 before config.json named a "kind"; expected.json holds what it said then
    directory = FIXTURES / "lm-v1"
    expected = json.loads((directory / "expected.json").read_text())
    model, tokenizer = load_model(directory)
    predictions, _ = predict_next(model, tokenizer, expected["prompt"], top_k=3)
    assert [p.token for p in predictions] == [token for token, _ in expected["top3"]]
    assert [p.prob for p in predictions] == pytest.approx([prob for _, prob in expected["top3"]], rel=1e-5)


def _copy_with_config(tmp_path: Path, **changes) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(FIXTURES / "lm-v1", directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))
    return directory


def test_the_kind_picks_the_class_and_unknown_kinds_or_versions_are_refused(tmp_path):
    directory = _copy_with_config(tmp_path, version=2, kind="lm")
    model, _ = load_model(directory, kind="lm")
    assert model.kind == "lm" and not model.training
    with pytest.raises(RnnkitError, match="holds a 'lm' model, not the 'speech' model asked for"):
        load_model(directory, kind="speech")
    with pytest.raises(RnnkitError, match="kind 'hologram', which this rnnkit does not know"):
        load_model(_copy_with_config(tmp_path / "a", version=2, kind="hologram"))
    with pytest.raises(RnnkitError, match="format version 3; this rnnkit reads 1 and 2"):
        load_model(_copy_with_config(tmp_path / "b", version=3, kind="lm"))
