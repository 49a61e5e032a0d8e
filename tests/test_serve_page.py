"""The page of `rnnkit serve` in a real browser (Chromium through Playwright) against a real server:
predictions as you type, the context shading, a streamed generation and an error shown politely."""

import os
import re
import shutil
import threading
import time

import pytest
from helpers import household_model_dir, object_outranks_distractors

SEED = "I picked up the remote controller on the couch and turned on the"
CHROMIUM = shutil.which("chromium")


def serve(model_dir):
    """A uvicorn server for `model_dir` on a free loopback port, in a daemon thread: (server, thread, url)."""
    import uvicorn
    from rnnkit.serve import create_app

    config = uvicorn.Config(create_app(model_dir), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]  # port 0: the system picked a free one
    return server, thread, f"http://127.0.0.1:{port}"


def shading(page):
    """The context words and their scores as the page shows them."""
    return page.eval_on_selector_all("#context span.word", "s => s.map(w => [w.textContent, +w.dataset.score])")


@pytest.mark.slow
def test_the_page_predicts_explains_and_generates(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs Playwright for Python")
    if CHROMIUM is None:
        if os.environ.get("CI"):  # .ci/run installs it: a CI run without it has lost the test, say so
            pytest.fail("Chromium is not on PATH (Debian: apt-get install chromium)")
        pytest.skip("the page test needs Chromium on PATH (Debian: apt-get install chromium)")
    server, thread, url = serve(household_model_dir(tmp_path / "model"))
    console_errors = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 1100})
            page.set_default_timeout(30_000)
            sync_api.expect.set_options(timeout=30_000)  # a busy CI machine may take seconds per answer
            page.on("pageerror", lambda error: console_errors.append(str(error)))
            asked = []
            page.on("request", lambda request: asked.append(request.url.rsplit("/", 1)[-1]))
            page.goto(url)
            sync_api.expect(page.locator("#model")).to_contain_text("word tokenizer")

            # typed key by key: the debounce and the cancelled stale requests must still end on the whole sentence
            page.locator("#text").press_sequentially(SEED, delay=15)
            sync_api.expect(page.locator(".prediction .token").first).to_have_text("television")
            sync_api.expect(page.locator(".prediction .prob").first).to_have_text(re.compile(r"^\d+\.\d%$"))
            bars = page.eval_on_selector_all(
                ".prediction .bar", "bs => bs.map(b => b.firstElementChild.offsetWidth / b.offsetWidth)")
            assert len(bars) == 8 and bars == sorted(bars, reverse=True) and bars[0] > 0.5 > 0.1 > bars[-1], bars
            page.wait_for_function(
                "words => [...document.querySelectorAll('#context span.word')].map(w => w.textContent)"
                ".join(' ') === words", arg=SEED)
            words = shading(page)
            assert [w for w, _ in words] == SEED.split()
            assert object_outranks_distractors(*map(list, zip(*words))), words
            sync_api.expect(page.locator("#context-caption")).to_contain_text("television")

            # another method re-shades the same words from the answer already there, with no new request
            attributions = asked.count("attribution")
            page.select_option("#method", "occlusion")
            page.wait_for_function("ig => [...document.querySelectorAll('#context span.word')]"
                                   ".some((w, i) => +w.dataset.score !== ig[i][1])", arg=words)
            occlusion = shading(page)
            assert [w for w, _ in occlusion] == SEED.split()
            assert object_outranks_distractors(*map(list, zip(*occlusion))), occlusion
            assert asked.count("attribution") == attributions

            # a streamed continuation, after the prompt and a space
            page.click("#generate")
            sync_api.expect(page.locator("#output")).to_have_attribute("data-state", "done")
            assert page.locator("#output .continuation").inner_text().strip()
            assert page.locator("#output").inner_text().startswith(SEED + " ")
            sync_api.expect(page.locator("#generate")).to_have_text("Generate")

            # a value out of range: the server's message in the status line, the field marked
            page.fill("#length", "5000")
            page.click("#generate")
            sync_api.expect(page.locator("#status")).to_contain_text("length")
            sync_api.expect(page.locator("#length")).to_have_attribute("aria-invalid", "true")
            sync_api.expect(page.locator("#output")).to_have_attribute("data-state", "error")

            shot = page.screenshot(path=tmp_path / "page.png", full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and (tmp_path / "page.png").stat().st_size > 1000
    assert not console_errors, console_errors
