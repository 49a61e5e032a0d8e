"""The household corpus: deterministic, balanced, distances spread as asked, distractors that
mislead without deciding, and the `rnnkit data household` command."""

from __future__ import annotations

import collections

import pytest

from rnnkit import cli
from rnnkit.errors import RnnkitError
from rnnkit.demos.household import corpus as household
from rnnkit.demos.household.corpus import DEVICES, MIN_DISTANCE, OBJECTS, SEED_SENTENCE, generate, parse


@pytest.fixture(scope="module")
def samples() -> list[household.Sample]:
    return generate(4000, max_distance=24, seed=0)


def _contains(words: list[str], phrase: str) -> bool:
    p = phrase.split()
    return any(words[i : i + len(p)] == p for i in range(len(words) - len(p) + 1))


def _between(sample: household.Sample) -> list[str]:
    """The `distance` words between the cue and the blank."""
    return sample.prompt.split()[len(sample.prompt.split()) - sample.distance :]


def test_the_seed_sentence_parses():
    s = parse(SEED_SENTENCE)
    assert (s.cue, s.device, s.target, s.distance) == ("remote controller", "television", "television", 7)
    assert s.prompt == "I picked up the remote controller on the couch and turned on the"
    assert s.text == SEED_SENTENCE


def test_same_seed_same_corpus_and_longer_corpora_extend_shorter_ones(samples):
    assert generate(300, 24, seed=0) == samples[:300]
    assert generate(300, 24, seed=1) != samples[:300]


def test_every_sample_parses_back_to_itself(samples):
    assert all(parse(s.text) == s for s in samples)
    assert all(s.text == f"{s.prompt} {s.device}" and s.prompt.endswith(" the") for s in samples)


def test_cue_and_device_are_paired_and_first_device_words_are_unique(samples):
    assert all(household.DEVICE_OF[s.cue] == s.device for s in samples)
    assert len({d.split()[0] for d in DEVICES}) == len(DEVICES) >= 8


@pytest.mark.parametrize("max_distance", [MIN_DISTANCE, 9, 24, 39])
def test_distances_stay_within_bounds(max_distance):
    got = [s.distance for s in generate(1000, max_distance, seed=2)]
    assert min(got) == MIN_DISTANCE and max(got) == max_distance
    assert all(len(_between(s)) == s.distance for s in generate(50, max_distance, seed=2))


def test_distances_spread_evenly(samples):
    counts = collections.Counter(s.distance for s in samples)
    expected = len(samples) / (24 - MIN_DISTANCE + 1)
    assert set(counts) == set(range(MIN_DISTANCE, 25))
    assert all(0.75 * expected < c < 1.25 * expected for c in counts.values()), counts


def test_devices_are_balanced(samples):
    counts = collections.Counter(s.device for s in samples)
    expected = len(samples) / len(DEVICES)
    assert set(counts) == set(DEVICES)
    assert all(abs(c - expected) <= 0.03 * expected for c in counts.values()), counts


def test_turned_on_the_alone_leaves_devices_near_uniform():
    # the words before the blank carry no hint: devices given the last three words are uniform
    by_ending = collections.defaultdict(collections.Counter)
    for s in generate(12000, seed=3):
        by_ending[" ".join(s.prompt.split()[-3:])][s.device] += 1
    assert set(by_ending) == {"turned on the", "switched on the"}
    for counts in by_ending.values():
        assert len(counts) == len(DEVICES) and max(counts.values()) < 1.4 * min(counts.values()), counts


def test_distractors_never_name_the_cue_or_its_device(samples):
    for s in samples:
        between = _between(s)
        assert not _contains(between, s.device) and not _contains(between, s.cue), s.text
        assert not _contains(between[:-3], "turned on the") and not _contains(between[:-3], "switched on the")


def test_distractors_mention_other_devices_so_the_latest_one_misleads(samples):
    named = 0
    for s in samples:
        between = _between(s)
        devices = [d for d in DEVICES if _contains(between, d)]
        objects = [o for o in OBJECTS if _contains(between, o)]
        named += bool(devices or objects)
        assert s.device not in devices
    # most long sentences name another device or object before the blank
    long_ones = [s for s in samples if s.distance >= 14]
    misled = sum(any(_contains(_between(s), d) for d in (*DEVICES, *OBJECTS)) for s in long_ones)
    assert misled > 0.7 * len(long_ones)
    assert named > 0.3 * len(samples)


def test_vocabulary_is_modest_lowercase_words_and_the_seeds_I(samples):
    vocabulary = {w for s in samples for w in s.text.split()}
    assert 100 < len(vocabulary) < 400
    # "I" is written as the seed writes it, so that the seed's sentence reads without <unk>
    assert all(w.isalpha() and (w.islower() or w == "I") for w in vocabulary)


def test_parse_rejects_other_sentences():
    for text in ("the cat sat on the mat", "I picked up the cat and turned on the television",
                 "I picked up the remote controller and turned on the radio", ""):
        with pytest.raises(RnnkitError, match="not a household sentence"):
            parse(text)


def test_bad_arguments_raise():
    with pytest.raises(RnnkitError, match="maximum distance must be at least 4"):
        generate(10, max_distance=3)
    with pytest.raises(RnnkitError, match="at least 0"):
        generate(-1)


def test_write_corpus_writes_one_sentence_a_line(tmp_path):
    path = household.write_corpus(tmp_path / "sub" / "h.txt", 40, 12, seed=5)
    assert path.read_text().splitlines() == [s.text for s in generate(40, 12, seed=5)]
    assert [p.name for p in path.parent.iterdir()] == ["h.txt"]  # no temp file left


def test_cli_writes_the_corpus(tmp_path, capsys):
    out = tmp_path / "household.txt"
    argv = ["data", "household", "--out", str(out), "--sentences", "50", "--max-distance", "10", "--seed", "1"]
    assert cli.main(argv) == 0
    assert out.read_text().splitlines() == [s.text for s in generate(50, 10, seed=1)]
    assert "wrote 50 sentences" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--sentences", "0"], "number of sentences must be at least 1"),
    (["--max-distance", "2"], "maximum distance must be at least 4"),
])
def test_cli_bad_values_fail_in_one_line_and_keep_the_old_file(tmp_path, capsys, argv, message):
    out = tmp_path / "household.txt"
    out.write_text("keep me\n")
    assert cli.main(["data", "household", "--out", str(out), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rnnkit: error: ") and message in err and err.count("\n") == 1
    assert out.read_text() == "keep me\n"


def test_cli_output_that_is_a_folder_fails(tmp_path, capsys):
    assert cli.main(["data", "household", "--out", str(tmp_path), "--sentences", "5"]) == 1
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--sentences", "many"], []])
def test_cli_usage_errors_exit_2_in_one_line(tmp_path, capsys, argv):
    extra = ["--out", str(tmp_path / "h.txt")] if argv else []
    with pytest.raises(SystemExit) as exit_:
        cli.main(["data", "household", *extra, *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnkit data household: error:") and err.count("\n") == 1
    assert not (tmp_path / "h.txt").exists()
