"""The benchmark scripts' --quick modes run end to end (the full runs are never part of the tests),
and they skip with a message where their data or GPU is missing."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.slow
def test_throughput_quick_reports_both_loops_and_inference():
    done = _run("throughput.py", "--quick", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (row,) = report["training"]
    assert row["rnnkit_tokens_per_s"] > 0 and row["plain_tokens_per_s"] > 0 and row["rnnkit_over_plain"] > 0
    (inference,) = report["inference"]
    assert 0 < inference["predict_median_ms"] <= inference["predict_p95_ms"]
    assert report["machine"]["torch"] == torch.__version__


@pytest.mark.slow
def test_throughput_quick_trains_both_loops_in_bf16_with_cpu_bf16():
    done = _run("throughput.py", "--quick", "--device", "cpu", "--parts", "train", "--cpu-bf16", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["training"]
    assert row["bf16"] is True and row["rnnkit_tokens_per_s"] > 0 and row["plain_tokens_per_s"] > 0


@pytest.mark.slow
def test_throughput_quick_compares_one_and_two_processes(tmp_path):
    done = _run("throughput.py", "--quick", "--device", "cpu", "--parts", "processes", "--rounds", "1", "--json",
                "--markdown", str(tmp_path / "b.md"))
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["processes"]
    assert set(row["processes"]) == {"1", "2"} and row["processes"]["1"]["speedup"] == 1
    assert row["processes"]["2"]["tokens_per_s"] > 0 and row["processes"]["2"]["threads_per_process"] == 1
    assert "## Training on several processes: CPU" in (tmp_path / "b.md").read_text()


def test_generation_quick_streams_what_decoding_gives():
    done = _run("generation.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert {r["tokenizer"] for r in results} == {"bpe", "word"}
    for r in results:
        assert len(r["tokens_per_s"]) == 4 and all(rate > 0 for rate in r["tokens_per_s"])
        assert r["streamed_equals_decoded"]


def test_scan_quick_reports_each_case_against_torch_and_the_step_loop(tmp_path):
    done = _run("scan.py", "--quick", "--json", "--plot", str(tmp_path / "scan.png"))
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [(r["cell"], r["T"]) for r in results] == [("mingru", 32), ("mingru", 128), ("minlstm", 32), ("minlstm", 128)]
    for r in results:
        assert r["torch_module"] == {"mingru": "GRU", "minlstm": "LSTM"}[r["cell"]]
        assert r["speedup_vs_torch"] == pytest.approx(r["torch_ms"] / r["scan_ms"])
        assert r["reference_ms"] > 0 and r["scan_saved_mib"] > 0 and set(r["methods_ms"]) == {"chunked:1", "chunked:16", "blocked:64", "log:1"}
    assert (tmp_path / "scan.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_runs_skip_with_a_message_without_a_gpu():
    done = _run("throughput.py", "--device", "cuda")
    assert done.returncode == 0 and "skipped" in done.stdout
    done = _run("ptb.py", "--recipe", "ptb-medium", "--device", "cuda")
    assert done.returncode == 0 and "skipped" in done.stdout


def test_ptb_skips_with_a_message_without_the_data(tmp_path):
    done = _run("ptb.py", "--data", str(tmp_path))
    assert done.returncode == 0 and done.stdout.startswith("skipped: the Penn Treebank is not in"), done.stdout


@pytest.mark.slow
def test_ptb_quick_trains_the_recipe_on_a_slice():
    done = _run("ptb.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("skipped"):
        pytest.skip(done.stdout.strip())
    results = json.loads(done.stdout)
    assert results["recipe"] == "ptb-cpu" and results["quick"]
    assert results["test_perplexity"] > 1 and results["tokens_per_s"] > 0
    assert results["config"]["model"]["tie_weights"]


@pytest.mark.slow
def test_ptb_quick_auto_at_character_level_reports_bits_per_character():
    done = _run("ptb.py", "--quick", "--recipe", "auto", "--minutes", "0.1", "--char", "--fraction", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("skipped"):
        pytest.skip(done.stdout.strip())
    results = json.loads(done.stdout)
    assert results["recipe"] == "ptb-char-auto-50pct-0.1min"
    assert results["test_bits_per_char"] == pytest.approx(results["test_loss"] / math.log(2))
    assert results["config"]["train"]["optimizer"] == "adamw" and "char tokens" in done.stderr


@pytest.mark.slow
def test_translation_quick_reports_bleu_by_minute_and_both_decoders(tmp_path):
    done = _run("translation.py", "--quick", "--corpus", "numbers", "--minutes", "0.1", "--out", str(tmp_path / "n"),
                "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert 0 <= report["exact_beam1"] <= 1 and 0 <= report["exact_beam5"] <= 1
    assert report["train_tokens_per_s"] > 0 and report["sentences_per_s_beam5"] > 0 and report["history"]
    if not list(Path("/usr/share/locale/fr/LC_MESSAGES").glob("*.mo")):
        pytest.skip("no French message catalogs on this machine")
    done = _run("translation.py", "--quick", "--minutes", "0.1", "--out", str(tmp_path / "g"), "--json",
                "--plot", str(tmp_path / "bleu.png"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"test_bleu_beam1", "test_bleu_beam5", "test_chrf_beam5", "signature"} <= report.keys()
    assert (tmp_path / "bleu.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_captioning_quick_reports_bleu_exact_and_where_attention_lands(tmp_path):
    done = _run("captioning.py", "--quick", "--minutes", "0.05", "--out", str(tmp_path / "c"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"test_bleu4_beam1", "test_bleu4_beam3", "test_exact_beam3", "images_per_s_beam3"} <= report.keys()
    assert 0 <= report["attention"]["share_inside"] <= 1 and report["attention"]["words"] > 0


@pytest.mark.slow
def test_serve_quick_load_answers_every_good_request_and_refuses_every_bad_one(tmp_path):
    from helpers import household_model_dir

    model = household_model_dir(tmp_path / "model")
    done = _run("serve.py", str(model), "--quick", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["modes"]) == {"batched", "unbatched", "mixed"} and report["clients"] == 4
    for mode, r in report["modes"].items():
        assert r["requests"] > 0 and r["errors"] == 0, (mode, r)
        assert r["bad_not_4xx"] == 0 and r["still_answering"], (mode, r)
        assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert report["modes"]["mixed"]["bad_requests"] == 12 * 20
    assert report["modes"]["unbatched"]["batch_window_ms"] == 0


@pytest.mark.slow
def test_speech_quick_reports_error_rates_by_snr_with_and_without_the_lm(tmp_path):
    import shutil

    if shutil.which("espeak-ng") is None and not os.environ.get("CI"):
        pytest.skip("needs espeak-ng (Debian: apt-get install espeak-ng)")
    from helpers import household_model_dir

    lm = household_model_dir(tmp_path / "lm")
    done = _run("speech.py", "--quick", "--minutes", "0.05", "--lm", str(lm), "--out", str(tmp_path / "s"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for decoding in ("greedy", "lm"):
        r = report[decoding]
        assert r["real_time_factor"] > 0 and sum(row["utterances"] for row in r["by_snr"]) == report["utterances"]["test"]
        assert {"wer_10db_and_up", "wer_0_to_5db"} <= r.keys()


@pytest.mark.slow
def test_precision_quick_compares_float32_and_bf16_speed_and_loss(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)
    done = _run("precision.py", "--quick", "--json", "--text", str(text), "--steps", "20",
                "--markdown", str(tmp_path / "b.md"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (row,) = report["speed"]
    assert row["float32_tokens_per_s"] > 0 and row["bf16_tokens_per_s"] > 0
    quality = report["quality"]
    for precision in ("float32", "bf16"):  # learning: below the uniform loss over 50 characters
        assert quality[precision]["loss_last"] < math.log(50) - 0.2, quality
    assert abs(quality["bf16"]["loss_last"] - quality["float32"]["loss_last"]) < 0.05
    assert "## bf16 autocast on the CPU" in (tmp_path / "b.md").read_text()


@pytest.mark.slow
def test_inference_quick_compares_torch_onnx_int8_and_int4(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(" ".join(f"w{(7 * i + j) % 150}" for j in range(20)) + "\n" for i in range(40)))
    done = _run("inference.py", "--quick", "--json", "--text", str(text), "--tokens", "400",
                "--markdown", str(tmp_path / "b.md"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["runtime"] for r in report["runtimes"]] == ["torch", "onnx", "onnx-int8", "onnx-int4"]
    for r in report["runtimes"]:
        assert 0 < r["predict_median_ms"] <= r["predict_p95_ms"] and r["sample_tokens_per_s"] > 0
    perplexity = report["text"]["perplexity"]
    assert report["text"]["tokens"] == 400 and perplexity["onnx"] == pytest.approx(perplexity["torch"], rel=1e-4)
    assert "## Inference runtimes: CPU" in (tmp_path / "b.md").read_text()


@pytest.mark.slow
def test_revisions_compares_this_checkout_with_another_revision():
    done = _run("revisions.py", "--base", "HEAD", "--cases", "word300awd-fp32", "--rounds", "1", "--steps", "1", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["rows"]
    assert row["case"] == "word300awd-fp32" and row["this"] > 0 and row["base"] > 0 and row["ratio"] > 0
