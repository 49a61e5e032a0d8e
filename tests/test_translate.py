"""Machine translation: attention, the encoder-decoder, decoding, data readers, training, the CLI."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import kill_once_saved
from safetensors.torch import load_file

from rnnkit.apps.translate import (TranslateConfig, TranslateTrainConfig, Translator, attention_map,
                                   build_vocabularies, evaluate, load_pairs, read_mo, train, translate)
from rnnkit.apps.translate.data import (bucketed, clean_message, collate, gettext_pairs, number_pairs, read_tsv,
                                        split_pairs)
from rnnkit.apps.translate.task import TranslateTask
from rnnkit.errors import RnnkitError
from rnnkit.nn.attention import SCORES, Attention
from rnnkit.training import load_model

torch.set_default_dtype(torch.float32)


def _one_line_error(capsys, cli, *argv) -> str:
    assert cli(list(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnkit: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ attention and the model


@pytest.mark.parametrize("score", SCORES)
def test_attention_weights_sum_to_one_and_give_padding_nothing(score):
    torch.manual_seed(0)
    attention = Attention(score, 6, 6).double()
    memory = torch.randn(3, 5, 6, dtype=torch.float64)
    mask = torch.arange(5)[None] < torch.tensor([5, 2, 1])[:, None]  # (B, S)
    query = torch.randn(3, 6, dtype=torch.float64)
    context, weights = attention(query, attention.keys(memory), memory, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(3, dtype=torch.float64))
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    # what lies in the padding never reaches the context
    noisy = memory.clone()
    noisy[~mask] = 1e3
    assert torch.allclose(attention(query, attention.keys(noisy), noisy, mask)[0], context)
    torch.autograd.gradcheck(lambda q, m: attention(q, attention.keys(m), m, mask)[0], (query.requires_grad_(),
                                                                                        memory.requires_grad_()))


def test_additive_score_is_bahdanaus_formula():
    torch.manual_seed(1)
    attention = Attention("bahdanau", 4, 6, attention_size=5).double()
    q, m = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    _, weights = attention(q, attention.keys(m), m, torch.ones(2, 3, dtype=torch.bool))
    e = torch.stack([torch.stack([attention.v.weight[0] @ torch.tanh(attention.W_q.weight @ q[b] + attention.W_m.weight
                                                                    @ m[b, j] + attention.W_m.bias)
                                  for j in range(3)]) for b in range(2)])
    assert torch.allclose(weights, e.softmax(-1))


def _tiny(cell="gru", score="bahdanau", vocab=(11, 13), **fields) -> Translator:
    torch.manual_seed(0)
    return Translator(TranslateConfig(*vocab, cell=cell, embedding_size=8, hidden_size=12, attention=score,
                                      dropout=0.0, **fields)).eval()


@pytest.mark.parametrize("cell,score", [("gru", "bahdanau"), ("lstm", "general"), ("gru", "dot")])
def test_a_padded_sentence_reads_as_it_does_alone(cell, score):
    model = _tiny(cell, score, encoder_layers=2, decoder_layers=2)
    sources, targets = [[3, 4, 5, 6], [7, 8]], [[2, 3, 4], [5]]
    together = collate(sources, targets, eos=1)
    logits, weights = model(together)
    for b in range(2):
        alone = collate([sources[b]], [targets[b]], eos=1)
        l1, w1 = model(alone)
        T = len(targets[b]) + 1
        assert torch.allclose(logits[:T, b], l1[:, 0], atol=1e-5)
        assert torch.allclose(weights[:T, b, : len(sources[b])], w1[:, 0], atol=1e-6)
        assert (weights[:, b, len(sources[b]):] == 0).all()


def test_tied_embeddings_share_one_matrix_and_need_equal_sizes():
    model = Translator(TranslateConfig(11, 13, embedding_size=12, hidden_size=12, tie_embeddings=True))
    assert model.out.weight is model.target_embedding.weight
    with pytest.raises(RnnkitError, match="tie_embeddings needs embedding_size == hidden_size"):
        TranslateConfig(11, 13, embedding_size=8, hidden_size=12, tie_embeddings=True)
    with pytest.raises(RnnkitError, match="hidden_size must be even"):
        TranslateConfig(11, 13, hidden_size=7)


# ------------------------------------------------------------------ data


def _mo_bytes(entries: dict[str, str], order: str = "<", charset: str = "UTF-8") -> bytes:
    """A .mo catalog built by hand (GNU gettext manual, "The Format of GNU MO Files")."""
    entries = {"": f"Content-Type: text/plain; charset={charset}\n", **entries}
    keys = sorted(entries)
    ids = [k.encode(charset) for k in keys]
    strs = [entries[k].encode(charset) for k in keys]
    n = len(keys)
    originals, translations = 28, 28 + 8 * n
    offset = 28 + 16 * n
    table, data = [b"", b""], b""
    for t, strings in enumerate((ids, strs)):
        for s in strings:
            table[t] += struct.pack(order + "2I", len(s), offset + len(data))
            data += s + b"\0"
    header = struct.pack(order + "7I", 0x950412DE, 0, n, originals, translations, 0, 0)
    return header + table[0] + table[1] + data


@pytest.mark.parametrize("order", ["<", ">"])
def test_the_mo_reader_reads_a_catalog_built_by_hand(tmp_path, order):
    path = tmp_path / "demo.mo"
    path.write_bytes(_mo_bytes({"Open the file": "Ouvrir le fichier", "menu\x04Quit": "Quitter",
                                "one file\x00%d files": "un fichier\x00%d fichiers", "Untranslated": ""}, order))
    assert read_mo(path) == {"Open the file": "Ouvrir le fichier", "Quit": "Quitter", "one file": "un fichier"}
    path.write_bytes(_mo_bytes({"Save as": "Enregistrer sous"}, order, charset="ISO-8859-1"))
    assert read_mo(path) == {"Save as": "Enregistrer sous"}
    path.write_bytes(b"not a catalog at all, just some text")
    with pytest.raises(RnnkitError, match="not a gettext catalog"):
        read_mo(path)


def test_the_mo_reader_reads_what_msgfmt_writes(tmp_path):
    msgfmt = "/usr/bin/msgfmt"
    if not os.path.exists(msgfmt):
        pytest.skip("msgfmt (Debian package gettext) is not installed")
    po = tmp_path / "fr.po"
    po.write_text('msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                  'msgid "_Open the file"\nmsgstr "_Ouvrir le fichier"\n\n'
                  'msgctxt "verb"\nmsgid "Print"\nmsgstr "Imprimer"\n\n'
                  'msgid "Delete the %s folder"\nmsgstr "Supprimer le dossier %s"\n', encoding="utf-8")
    subprocess.run([msgfmt, "-o", str(tmp_path / "fr.mo"), str(po)], check=True)
    catalog = read_mo(tmp_path / "fr.mo")
    assert catalog == {"_Open the file": "_Ouvrir le fichier", "Print": "Imprimer",
                       "Delete the %s folder": "Supprimer le dossier %s"}


def test_messages_are_cleaned_or_dropped():
    assert clean_message("_Open the File") == "Open the File"
    assert clean_message("&Save As…") == "Save As…"
    assert clean_message("Ouvrir (_O)") == "Ouvrir"
    assert clean_message("Pr_eferences") == "Preferences"
    assert clean_message("Fichier\u00a0:") == "Fichier :"
    for dropped in ("Delete %s", "Copy %(name)s here", "{0} files", "<b>Bold</b>", "two\nlines", "---", "set max_wal_senders"):
        assert clean_message(dropped) is None, dropped


def test_gettext_pairs_from_a_locale_folder(tmp_path):
    folder = tmp_path / "fr" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "a.mo").write_bytes(_mo_bytes({"Open the file": "Ouvrir le fichier", "Close": "Fermer",
                                             "Print %s": "Imprimer %s", "Save the file": "Enregistrer le fichier"}))
    (folder / "b.mo").write_bytes(_mo_bytes({"Open the file": "Ouvre le fichier", "Save the file": "Sauver le fichier",
                                             "Quit the program": "Quit the program"}))
    (folder / "c.mo").write_bytes(_mo_bytes({"Save the file": "Enregistrer le fichier"}))
    (folder / "broken.mo").write_bytes(b"\xde\x12\x04\x95" + b"\xff" * 40)
    pairs, catalogs = gettext_pairs("fr", tmp_path)
    assert len(catalogs) == 4
    # one word ("Close"), a format specifier, an untranslated message: out; the commonest translation wins,
    # ties by sorted order
    assert pairs == [("Open the file", "Ouvre le fichier"), ("Save the file", "Enregistrer le fichier")]


def test_splits_by_hash_never_share_a_source_sentence():
    pairs = [(f"sentence {i % 300}", f"phrase {i}") for i in range(900)]
    splits = split_pairs(pairs)
    seen = [{s.lower() for s, _ in splits[name]} for name in ("train", "valid", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert all(splits[name] for name in ("train", "valid", "test"))
    assert split_pairs(pairs) == splits  # stable


def test_tsv_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    for text, message in [("a b\tc d\nno tab here\n", r"pairs.tsv:2: no tab"),
                          ("a\tb\n\t c\n", r"pairs.tsv:2: the source side is empty"),
                          ("a\t \n", r"pairs.tsv:1: the target side is empty"), ("", "is empty"), ("\n \n", "is empty")]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(RnnkitError, match=message):
            read_tsv(path)
    path.write_bytes(b"ok\tfine\nbad \xff\tbyte\n")
    with pytest.raises(RnnkitError, match=r"pairs.tsv:2: not UTF-8"):
        read_tsv(path)
    assert read_tsv(_write(tmp_path / "ok.tsv", "a b\tc d\r\n\nx\ty\n")) == [("a b", "c d"), ("x", "y")]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_batches_are_bucketed_by_length_and_reshuffled_every_epoch():
    lengths = [(i % 7 + 1, i % 5 + 1) for i in range(100)]
    groups = bucketed(lengths, 10, seed=0)
    assert sorted(i for g in groups for i in g) == list(range(100))
    assert all(max(lengths[i][1] for i in g) - min(lengths[i][1] for i in g) <= 1 for g in groups)
    pairs = [(" ".join("ab"[:1 + i % 2] * (1 + i % 4)), "x " * (1 + i % 3)) for i in range(80)]
    splits = {"train": pairs, "valid": pairs[:4], "test": []}
    task = TranslateTask(splits, build_vocabularies(pairs, "char"), TranslateTrainConfig(batch_size=8, bleu_sentences=0), 64)
    batches = task.batches(torch.device("cpu"))

    def epoch(n):
        task.set_epoch(n)
        return [batches[i].target.tolist() for i in range(len(batches))]

    assert epoch(0) != epoch(1) and epoch(0) == epoch(0)


# ------------------------------------------------------------------ learning and decoding


@pytest.fixture(scope="module")
def numbers_model(tmp_path_factory):
    """English -> German number words, 0 .. 399, trained for about a minute at most."""
    directory = tmp_path_factory.mktemp("numbers") / "model"
    torch.set_num_threads(2)
    splits = split_pairs(number_pairs(400, "de"), valid=5, test=10)
    vocab = build_vocabularies(splits["train"], "char")
    config = TranslateConfig(vocab.source.vocab_size, vocab.target.vocab_size, embedding_size=32, hidden_size=128,
                             dropout=0.1)
    summary = train(directory, splits, vocab, config, TranslateTrainConfig(
        epochs=60, batch_size=16, lr=3e-3, max_minutes=1.0, checkpoint_every=None, bleu_sentences=0, early_stop=6))
    torch.set_num_threads(1)
    return directory, splits, summary


@pytest.mark.slow
def test_a_small_model_learns_number_words_it_never_saw(numbers_model):
    directory, splits, summary = numbers_model
    model, vocab = load_model(directory)
    test = splits["test"]
    out = translate(model, vocab, [s for s, _ in test])
    exact = sum(t.text == ref for t, (_, ref) in zip(out, test)) / len(test)
    assert exact >= 0.85, [(t.source, t.text) for t in out]
    assert summary["history"][0]["valid_loss"] > 3 * summary["best_valid"]


@pytest.mark.slow
def test_beam_one_is_greedy_and_batched_equals_one_by_one(numbers_model):
    directory, splits, _ = numbers_model
    model, vocab = load_model(directory)
    sentences = [s for s, _ in splits["test"][:12]] + ["seven hundred", "one"]
    for beam in (1, 3):
        together = translate(model, vocab, sentences, beam=beam, batch_size=64)
        alone = [translate(model, vocab, [s], beam=beam)[0] for s in sentences]
        assert [t.tokens for t in together] == [t.tokens for t in alone]
        if beam > 1:
            assert [t.score for t in together] == pytest.approx([t.score for t in alone], abs=1e-4)
    greedy = translate(model, vocab, sentences, beam=1)
    assert [t.tokens for t in translate(model, vocab, sentences, beam=1)] == [t.tokens for t in greedy]
    from rnnkit.decoding import beam_search

    batch = collate([vocab.source.encode(s, add_eos=False) for s in sentences[:1]], [[]], vocab.eos)
    log_probs, state = model.start(batch.source, batch.source_lengths, vocab.eos)
    best = beam_search(model, log_probs, state, 40, 1, eos_id=vocab.eos)[0][0].tokens
    assert best[:-1] == greedy[0].tokens


@pytest.mark.slow
def test_attention_of_a_trained_model_reads_units_before_tens(numbers_model):
    """German says the unit first ("vierundzwanzig"): writing its first letters, the model looks at
    the English unit ("four", after "twenty-")."""
    directory, _, _ = numbers_model
    model, vocab = load_model(directory)
    t = translate(model, vocab, ["twenty-four"])[0]
    assert t.text == "vierundzwanzig"
    weights = attention_map(model, vocab, t)  # (T + 1, S)
    assert torch.allclose(weights.sum(-1), torch.ones(len(weights)))
    # the first target letters attend more to "four" (source positions 7..10) than to "twenty" (0..5)
    assert weights[:3, 7:].sum() > weights[:3, :6].sum()


@pytest.mark.slow
def test_save_load_round_trip_and_evaluate_scores(numbers_model, tmp_path):
    directory, splits, _ = numbers_model
    model, vocab = load_model(directory)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    again, vocab2 = load_model(directory, kind="translate")
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    assert vocab2.source == vocab.source and vocab2.target == vocab.target
    result = evaluate(again, vocab2, splits["test"], beam=3)
    # one word a sentence: chrF, not BLEU, whose 4-grams need four
    assert result["pairs"] == len(splits["test"]) and result["chrf"] > 80 and "nrefs:1" in result["signature"]["bleu"]
    with pytest.raises(RnnkitError, match="not the 'lm' model"):
        load_model(directory, kind="lm")


# ------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """A small translator trained by the command line on a few word pairs."""
    root = tmp_path_factory.mktemp("cli")
    words = ["file", "folder", "window", "page", "menu", "tab", "document", "list", "message", "image"]
    french = ["fichier", "dossier", "fenêtre", "page", "menu", "onglet", "document", "liste", "message", "image"]
    verbs = [("open", "ouvrir"), ("close", "fermer"), ("print", "imprimer"), ("save", "enregistrer"),
             ("copy", "copier"), ("delete", "supprimer"), ("move", "déplacer"), ("show", "afficher")]
    lines = [f"{v} the {w}\t{fv} le {fw}" for v, fv in verbs for w, fw in zip(words, french)]
    data = _write(root / "pairs.tsv", "\n".join(lines * 3) + "\n")
    out = root / "model"
    from rnnkit.cli import main

    assert main(["translate", "train", "--data", str(data), "--out", str(out), "--tokenizer", "word", "--hidden", "16",
                 "--embedding", "8", "--epochs", "2", "--batch-size", "8", "--quiet", "--max-length", "6"]) == 0
    return out, data


def test_cli_train_evaluate_run_and_heat_map(cli_model, tmp_path, capsys, cli):
    out, data = cli_model
    results = json.loads((out / "results.json").read_text())
    assert {"test_bleu", "test_chrf", "steps"} <= results.keys()
    assert (out / "data" / "train.tsv").exists()
    assert cli(["translate", "evaluate", str(out), "--data", str(data), "--beam", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result.keys() >= {"bleu", "chrf", "pairs", "beam"} and result["beam"] == 2 and result["pairs"] == 240
    png = tmp_path / "map.png"
    assert cli(["translate", "run", str(out), "open the file", "--beam", "1", "--json", "--attention-png", str(png)]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["source"] == "open the file" and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_warns_about_unknown_words_and_cut_sentences(cli_model, capsys, cli, monkeypatch):
    out, _ = cli_model
    assert cli(["translate", "run", str(out), "open the spaceship", "--beam", "1"]) == 0
    assert "unknown to the model, read as <unk>: spaceship" in capsys.readouterr().err
    assert cli(["translate", "run", str(out), "open the file " * 5, "--beam", "1"]) == 0
    assert "beyond the model's limit of 6 were cut" in capsys.readouterr().err
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("open the file\n\nclose the menu\n"))
    assert cli(["translate", "run", str(out), "--beam", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_cli_bad_input_is_one_line(cli_model, tmp_path, capsys, cli, corpus_file):
    out, data = cli_model
    bad = _write(tmp_path / "bad.tsv", "open the file\touvrir le fichier\nno tab\n")
    assert "bad.tsv:2: no tab" in _one_line_error(capsys, cli, "translate", "train", "--data", str(bad), "--out",
                                                  str(tmp_path / "m"))
    assert "bad.tsv:2: no tab" in _one_line_error(capsys, cli, "translate", "evaluate", str(out), "--data", str(bad))
    empty = _write(tmp_path / "empty.tsv", "")
    assert "is empty" in _one_line_error(capsys, cli, "translate", "evaluate", str(out), "--data", str(empty))
    (tmp_path / "binary.tsv").write_bytes(b"a\tb\n\xff\xfe\tc\n")
    assert "binary.tsv:2: not UTF-8" in _one_line_error(capsys, cli, "translate", "evaluate", str(out), "--data",
                                                         str(tmp_path / "binary.tsv"))
    lm = tmp_path / "lm"
    assert cli(["train", "--data", str(corpus_file), "--out", str(lm), "--hidden", "8", "--layers", "1", "--epochs", "1",
                "--quiet"]) == 0
    capsys.readouterr()
    assert "holds a 'lm' model, not the 'translate' model" in _one_line_error(capsys, cli, "translate", "run", str(lm), "hi")
    assert "holds a 'lm' model, not a translator" in _one_line_error(capsys, cli, "translate", "train", "--data",
                                                                     str(data), "--out", str(lm), "--resume")
    assert "already holds a model" in _one_line_error(capsys, cli, "translate", "train", "--data", str(data), "--out",
                                                      str(out))
    assert "--hidden must be even" in _one_line_error(capsys, cli, "translate", "train", "--data", str(data), "--out",
                                                      str(tmp_path / "odd"), "--hidden", "7")
    before = (out / "model.safetensors").read_bytes()
    assert (out / "model.safetensors").read_bytes() == before


def test_cli_builds_number_and_gettext_corpora(tmp_path, capsys, cli):
    assert cli(["translate", "data", "numbers", "--out", str(tmp_path / "n"), "--count", "200"]) == 0
    assert "number words 0 .. 199" in capsys.readouterr().out
    pairs = load_pairs(tmp_path / "n")
    assert sum(map(len, pairs.values())) == 200 and ("twenty-four", "vierundzwanzig") in [p for v in pairs.values() for p in v]
    if not list(Path("/usr/share/locale/fr/LC_MESSAGES").glob("*.mo")):
        pytest.skip("no French message catalogs on this machine")
    assert cli(["translate", "data", "gettext", "--lang", "fr", "--out", str(tmp_path / "g")]) == 0
    said = capsys.readouterr().out
    assert "English -> fr pairs from" in said and (tmp_path / "g" / "test.tsv").exists()
    assert "unknown language 'xx'" in _one_line_error(capsys, cli, "translate", "data", "gettext", "--lang", "xx",
                                                      "--out", str(tmp_path / "x"))


@pytest.mark.slow
def test_killed_and_resumed_translator_ends_with_the_same_weights(tmp_path):
    data = tmp_path / "numbers"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rnnkit", "translate"]
    subprocess.run([*command, "data", "numbers", "--out", str(data), "--count", "300"], check=True, env=env)
    common = ["train", "--data", str(data), "--tokenizer", "char", "--epochs", "3", "--checkpoint-every", "5",
              "--hidden", "16", "--embedding", "8", "--batch-size", "16", "--bleu-sentences", "5", "--quiet", "--seed", "4"]
    subprocess.run([*command, *common, "--out", str(tmp_path / "straight")], check=True, env=env, timeout=600)
    victim = subprocess.Popen([*command, *common, "--out", str(tmp_path / "killed")], env=env)
    left = kill_once_saved(victim, tmp_path / "killed", 20)
    assert left < json.loads((tmp_path / "straight" / "results.json").read_text())["steps"]  # killed part-way
    subprocess.run([*command, *common, "--out", str(tmp_path / "killed"), "--resume"], check=True, env=env, timeout=600)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_demo_falls_back_to_number_words_without_catalogs_and_reuses_its_model(tmp_path):
    from rnnkit.apps.translate.demo import format_report, run_demo

    said = []
    report = run_demo(tmp_path / "demo", minutes=0.1, say=said.append, locale_dir=tmp_path / "no-locales")
    assert report["corpus"] == "numbers-de" and "using number words" in said[0] and "apt-get install" in said[0]
    assert len(report["samples"]) == 8 and report["test_bleu_beam5"] is not None
    assert (tmp_path / "demo" / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert "test BLEU" in format_report(report)
    weights = (tmp_path / "demo" / "model" / "model.safetensors").read_bytes()
    again = run_demo(tmp_path / "demo", minutes=0.1, say=said.append, locale_dir=tmp_path / "no-locales")
    assert again["samples"] == report["samples"] and (tmp_path / "demo" / "model" / "model.safetensors").read_bytes() == weights
