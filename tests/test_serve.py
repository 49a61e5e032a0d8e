"""`rnnkit serve`: the API's contract, its limits, micro-batching and streaming, against the app
in-process (FastAPI's TestClient, on httpx)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from helpers import household_model_dir, object_outranks_distractors
from rnnkit.apps.lm import beam_search, predict_next, sample
from rnnkit.serve import create_app
from rnnkit.serve.batching import MicroBatcher
from rnnkit.training import load_model

SEED = "I picked up the remote controller on the couch and turned on the"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return household_model_dir(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def client(model_dir: Path):
    with TestClient(create_app(model_dir, batch_window_ms=5)) as client:
        yield client


@pytest.fixture(scope="module")
def local(model_dir: Path):
    return load_model(model_dir)


def _events(text: str) -> list[tuple[str | None, dict]]:
    """The (event, data) pairs of a server-sent event stream."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event"), json.loads(fields["data"])))
    return events


def test_health_model_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok", "kind": "lm"}
    info = client.get("/v1/model").json()
    assert info["kind"] == "lm" and info["tokenizer"] == "word" and info["vocab_size"] == 140
    assert info["config"]["hidden_size"] == 64 and "/v1/predict" in info["endpoints"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/predict", "/v1/generate", "/v1/attribution"}


def test_predict_answers_as_the_library_does(client, local):
    body = client.post("/v1/predict", json={"text": SEED, "top_k": 3}).json()
    expected, unknown = predict_next(*local, SEED, 3)
    assert [p["token"] for p in body["predictions"]] == [p.token for p in expected] and body["predictions"][0]["token"] == "television"
    assert [p["prob"] for p in body["predictions"]] == pytest.approx([p.prob for p in expected], abs=1e-6)
    assert body["prompt"] == SEED and body["unknown"] == unknown == []
    assert client.post("/v1/predict", json={"text": "I took the zyzzyva"}).json()["unknown"] == ["zyzzyva"]


def test_generate_samples_as_the_library_does_and_streams_the_same_text(client, local):
    request = {"text": "I picked up the", "length": 12, "temperature": 0.8, "top_k": 20, "seed": 5}
    text = client.post("/v1/generate", json=request).json()["text"]
    assert text == "".join(sample(*local, "I picked up the", 12, 0.8, 20, None, 5)) and text
    stream = client.post("/v1/generate", json=request | {"stream": True})
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = _events(stream.text)
    assert [e for e, _ in events] == [None] * (len(events) - 1) + ["done"]
    assert "".join(d["text"] for _, d in events[:-1]) == events[-1][1]["text"] == text
    beam = client.post("/v1/generate", json={"text": "I picked up the", "length": 6, "beam": 3}).json()["text"]
    assert beam == beam_search(*local, "I picked up the", 6, 3)[0]


def test_attribution_scores_every_word_for_the_top_prediction(client):
    body = client.post("/v1/attribution", json={"text": SEED}).json()
    assert body["target"] == "television" and body["tokens"] == SEED.split()
    scores = body["scores"]
    assert {len(v) for v in scores.values()} == {len(body["tokens"])}
    for method in ("occlusion", "integrated_gradients"):  # the object decides the device
        assert object_outranks_distractors(body["tokens"], scores[method]), (method, scores[method])
    devices = ["television", "kettle", "console"]
    restricted = client.post("/v1/attribution", json={"text": SEED, "target": "kettle", "candidates": devices}).json()
    assert restricted["target"] == "kettle" and restricted["prob"] < 0.5


@pytest.mark.parametrize("path, body, status, field", [
    ("/v1/predict", {}, 422, "text"),
    ("/v1/predict", {"text": 5}, 422, "text"),
    ("/v1/predict", {"text": "a", "top_k": 0}, 422, "top_k"),
    ("/v1/predict", {"text": "a", "top_k": 141}, 422, "top_k"),
    ("/v1/predict", {"text": "a", "top_k": True}, 422, "top_k"),
    ("/v1/predict", {"text": "a", "colour": "red"}, 422, "colour"),
    ("/v1/predict", {"text": "the " * 2001}, 422, "text"),
    ("/v1/predict", ["text"], 422, None),
    ("/v1/predict", {"text": "\ud800 turned"}, 422, "text"),
    ("/v1/generate", {"text": "\ud800"}, 422, "text"),
    ("/v1/generate", {"temperature": float("inf")}, 422, "temperature"),
    ("/v1/generate", {"temperature": 0}, 422, "temperature"),
    ("/v1/generate", {"top_p": 1.5}, 422, "top_p"),
    ("/v1/generate", {"top_p": 0}, 422, "top_p"),
    ("/v1/generate", {"length": 1001}, 422, "length"),
    ("/v1/generate", {"top_k": 1000}, 422, "top_k"),
    ("/v1/generate", {"beam": 0}, 422, "beam"),
    ("/v1/generate", {"seed": -1}, 422, "seed"),
    ("/v1/attribution", {"text": "I took the", "target": "spaceship"}, 422, "target"),
    ("/v1/attribution", {"text": "I took the", "target": "kettle", "candidates": ["toaster", "oven"]}, 422, "target"),
    ("/v1/attribution", {"text": "I took the", "candidates": ["toaster", "zyzzyva"]}, 422, "candidates"),
    ("/v1/attribution", {"text": "  "}, 422, "text"),
    ("/v1/attribution", {"text": "the " * 201}, 422, "text"),
])
def test_bad_requests_get_a_4xx_naming_the_field(client, path, body, status, field):
    # json.dumps as a client might: lone surrogates escaped, infinity as JavaScript writes it
    response = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()
    assert error["field"] == field and error["error"] and "\n" not in error["error"]
    if field:
        assert error["error"].startswith(field)


def test_malformed_and_oversized_bodies_and_unknown_routes(client):
    bad = client.post("/v1/predict", content=b'{"text": ', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    empty = client.post("/v1/predict", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 422 and empty.json()["error"].startswith("the body must be a JSON object")
    big = b'{"text": "' + b"a " * 40_000 + b'"}'
    assert client.post("/v1/predict", content=big, headers={"content-type": "application/json"}).status_code == 413
    chunked = client.post("/v1/predict", content=iter([big[:30_000], big[30_000:]]),
                          headers={"content-type": "application/json"})  # no Content-Length
    assert chunked.status_code == 413 and "65536" in chunked.json()["error"]
    assert client.get("/v1/nothing").status_code == 404 and client.get("/v1/predict").status_code == 405
    assert client.get("/healthz").status_code == 200  # still answering


def test_concurrent_requests_get_the_answers_they_get_alone(client):
    prompts = [SEED, "I grabbed the tea bag and switched on the", "I found the", "the", "I picked up the dirty laundry",
               "I grabbed the game controller under the chair while mom sneezed and turned on the"] * 4
    alone = [client.post("/v1/predict", json={"text": p, "top_k": 4}).json() for p in prompts]
    together: list[dict | None] = [None] * len(prompts)

    def ask(i: int) -> None:
        together[i] = client.post("/v1/predict", json={"text": prompts[i], "top_k": 4}).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        assert [p["token"] for p in a["predictions"]] == [p["token"] for p in b["predictions"]]
        assert [p["prob"] for p in a["predictions"]] == pytest.approx([p["prob"] for p in b["predictions"]], abs=1e-5)


def test_the_micro_batcher_runs_requests_that_come_together_as_one_batch():
    calls: list[list[int]] = []

    def square(items):
        calls.append(list(items))
        if -1 in items:
            raise ValueError("no negatives")
        return [i * i for i in items]

    async def main():
        batcher = MicroBatcher(square, window=0.05, max_batch=8)
        results = await asyncio.gather(*(batcher(i) for i in range(10)))
        with pytest.raises(ValueError, match="no negatives"):
            await batcher(-1)
        await batcher.close()
        alone = MicroBatcher(square, window=0, max_batch=8)
        return results, await asyncio.gather(*(alone(i) for i in range(3)))

    results, unbatched = asyncio.run(main())
    reused = MicroBatcher(lambda items: [i + 1 for i in items], window=0.01, max_batch=8)
    assert [asyncio.run(reused(i)) for i in range(2)] == [1, 2]  # each event loop gets its own worker
    assert results == [i * i for i in range(10)] and unbatched == [0, 1, 4]
    assert calls[:2] == [list(range(8)), [8, 9]] and calls[2] == [-1]
    assert sorted(len(c) for c in calls[3:]) == [1, 1, 1]


def test_a_request_past_the_time_limit_is_cancelled(model_dir):
    with TestClient(create_app(model_dir, timeout_s=0.01)) as client:
        long = {"text": "I picked up the", "length": 1000, "temperature": 1.0, "seed": 0}
        response = client.post("/v1/generate", json=long)
        assert response.status_code == 504 and "time limit" in response.json()["error"]
        events = _events(client.post("/v1/generate", json=long | {"stream": True}).text)
        assert events[-1][0] == "error" and "time limit" in events[-1][1]["error"]
        assert len(events) < 1000


def test_serve_refuses_what_it_cannot_serve_in_one_line(cli, tmp_path, capsys, model_dir):
    assert cli(["serve", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rnnkit: error:") and err.count("\n") == 1
    assert cli(["serve", str(model_dir), "--port", "70000"]) == 1
    assert "--port" in capsys.readouterr().err


def test_a_translator_directory_serves_translate(tmp_path):
    import torch
    from rnnkit.apps.translate import TranslateConfig, TranslateTrainConfig, Translator, build_vocabularies, translate
    from rnnkit.training.checkpoint import save_model

    vocab = build_vocabularies([("one two three", "eins zwei drei"), ("four", "vier")], kind="word")
    torch.manual_seed(0)
    model = Translator(TranslateConfig(vocab.source.vocab_size, vocab.target.vocab_size, embedding_size=8,
                                       hidden_size=12, max_length=20))
    save_model(tmp_path, model, vocab.assets(), TranslateTrainConfig())
    with TestClient(create_app(tmp_path)) as client:
        assert client.get("/v1/model").json()["endpoints"] == ["/v1/translate"]
        body = client.post("/v1/translate", json={"text": "two three five", "beam": 2}).json()
        [expected] = translate(model.eval(), vocab, ["two three five"], beam=2)
        assert body["translation"] == expected.text and body["unknown"] == ["five"]
        assert client.post("/v1/translate", json={"text": "", "beam": 2}).json()["field"] == "text"
        assert client.post("/v1/predict", json={"text": "two"}).status_code == 404  # not a language model


def test_a_captioner_directory_serves_caption(tmp_path):
    import io

    import numpy as np
    import torch
    from PIL import Image
    from rnnkit.apps.caption import CaptionConfig, CaptionTrainConfig, Captioner, describe
    from rnnkit.apps.caption.task import TOKENIZER
    from rnnkit.data import train_tokenizer_from_text
    from rnnkit.training.checkpoint import save_model

    tokenizer = train_tokenizer_from_text("word", ["a red circle\na blue square left of a red circle\n"])
    torch.manual_seed(0)
    model = Captioner(CaptionConfig(tokenizer.vocab_size))
    save_model(tmp_path, model, {TOKENIZER: tokenizer}, CaptionTrainConfig())
    pixels = np.random.default_rng(0).integers(0, 256, (model.config.image_height, model.config.image_width, 3),
                                               dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    with TestClient(create_app(tmp_path)) as client:
        body = client.post("/v1/caption", files={"image": ("scene.png", png.getvalue(), "image/png")}).json()
        [expected] = describe(model.eval(), tokenizer, torch.from_numpy(pixels).permute(2, 0, 1)[None], beam=3)
        assert body["caption"] == expected.text
        bad = client.post("/v1/caption", files={"image": ("notes.txt", b"not an image", "text/plain")})
        assert bad.status_code == 422 and bad.json()["field"] == "image" and "notes.txt" in bad.json()["error"]
        assert client.post("/v1/caption").status_code == 422


def test_a_recogniser_directory_serves_transcribe(tmp_path):
    import io

    import numpy as np
    from rnnkit.apps.speech import SpeechConfig, SpeechRecognizer, SpeechTrainConfig, transcribe_file
    from rnnkit.apps.speech.data import write_wav
    from rnnkit.training.checkpoint import save_model

    model = SpeechRecognizer(SpeechConfig(channels=2, hidden_size=8, num_layers=1))
    save_model(tmp_path / "model", model, {}, SpeechTrainConfig())
    wav = write_wav(tmp_path / "a.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
    with TestClient(create_app(tmp_path / "model")) as client:
        body = client.post("/v1/transcribe", files={"audio": ("a.wav", wav.read_bytes(), "audio/wav")}).json()
        assert body["text"] == transcribe_file(model.eval(), wav)[0] and body["notes"] == []
        bad = client.post("/v1/transcribe", files={"audio": ("notes.txt", io.BytesIO(b"hello").read(), "text/plain")})
        assert bad.status_code == 422 and bad.json()["field"] == "audio" and "notes.txt" in bad.json()["error"]
