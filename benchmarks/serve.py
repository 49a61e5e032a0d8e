"""Load test of `rnnkit serve`: requests/s and latency of /v1/predict, with and without micro-batching.

The script starts the server itself (`python -m rnnkit serve MODEL_DIR` on a free loopback port,
a fresh process for each mode), waits for GET /healthz, and runs --clients concurrent clients for
--seconds. Each client holds one HTTP/1.1 keep-alive connection and sends POST /v1/predict
{"text": <a household sentence ending "turned on the">, "top_k": 5} back to back, one request in
flight per client; a request's latency runs from writing it to having read its whole answer.
Before the timed span every client sends a few untimed requests (warm-up), then all start
together. Modes:

- batched: the server's micro-batching on (--batch-window-ms, default 2 ms);
- unbatched: `--batch-window-ms 0`, every request its own forward pass;
- mixed: batched, with --bad requests of each kind of mistake spread over the span among the good
  ones, on the same connections: malformed JSON, no "text", "text": 5, a lone surrogate in
  "text", top_k 0, top_k over the
  vocabulary (GET /v1/model tells its size), /v1/generate with temperature 0, top_p 1.5 and
  length 5000, a body over 64 KiB, an unknown path and a GET on /v1/predict. Every one must get a
  4xx with a JSON body holding "error" (`bad_not_4xx` counts those that do not); bad requests
  left unsent when the span ends are sent right after it, untimed.

Per mode: `requests` (good requests answered 200 with a non-empty "predictions" list within the
span), `requests_per_s`, `p50_ms` / `p99_ms` of those, `errors` (good requests answered otherwise,
or failed), `still_answering` (GET /healthz answers 200 afterwards and the server is still
running), and the CPU time the server and the load generator used over the span, in cores (on
Linux). The goals of the issue: p99 <= 50 ms and >= 500 requests/s with 32 clients.

The load generator shares the CPU with the server, so it is kept light: no torch and no rnnkit
imports in this process, and a minimal HTTP/1.1 client on asyncio streams (Content-Length bodies
only, as uvicorn sends them) instead of an HTTP library. `harness_ceiling` in the batched mode is
what the same clients reach against GET /healthz (no model work): the most this harness can show.

    python benchmarks/serve.py MODEL_DIR [--clients 32] [--seconds 30] [--bad 1000]
        [--batch-window-ms 2] [--modes batched,unbatched,mixed] [--json] [--quick]

--quick (for the tests): 4 clients, 2 seconds, 20 bad requests of each kind. Run the full
measurement alone on the machine: anything else running takes cores from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from machine import host_info  # the script beside this one

HOST = "127.0.0.1"
GOALS = {"p99_ms_at_most": 50.0, "requests_per_s_at_least": 500.0}
WARMUP_REQUESTS = 5  # per client, untimed
REQUEST_TIMEOUT = 30.0  # s; a request that takes longer is an error and its connection is reopened
STARTUP_TIMEOUT = 180.0  # s for the server to load the model and answer /healthz
MAX_BODY = 64 * 1024  # the server's limit on a JSON body (the contract)
PREDICT_PROMPTS = [
    "I picked up the remote controller on the couch and turned on the",
    "I grabbed the slice of bread on the counter while the dog barked and turned on the",
    "I found the tea bag by the door and then turned on the",
    "I took the frozen pizza on the shelf as mom laughed and turned on the",
    "I picked up the vinyl record under the chair when the phone rang and after that turned on the",
    "I grabbed the wrinkled shirt next to the sink and turned on the",
    "I found the bag of popcorn in the basket while my sister called and turned on the",
    "turned on the",
]


class ProtocolError(Exception):
    """An answer this client does not read (no Content-Length, a malformed head)."""


# ---------------------------------------------------------------- a minimal HTTP/1.1 client


def http_request(method: str, path: str, body: bytes | None = None) -> bytes:
    """The bytes of one request on a keep-alive connection."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("ascii") + (body or b"")


def json_request(path: str, payload: Any) -> bytes:
    return http_request("POST", path, json.dumps(payload).encode())


class Connection:
    """One keep-alive connection; `request` sends a request and reads its answer (status, body).
    It reconnects when the server said `Connection: close`, and after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                if self.writer is None:
                    await self._open()
                assert self.reader is not None and self.writer is not None
                self.writer.write(raw)
                if len(raw) > 16384:
                    await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 "):
                    raise ProtocolError(f"not an HTTP/1.1 answer: {head[:40]!r}")
                status, length, close = int(head[9:12]), None, False
                for line in head[:-4].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding":
                        raise ProtocolError("a chunked answer (this client reads Content-Length bodies only)")
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length is None:
                    raise ProtocolError("an answer without Content-Length")
                body = await self.reader.readexactly(length) if length else b""
        except BaseException:
            self.close()  # the stream may be out of step with the requests: start afresh
            raise
        if close:
            self.close()
        return status, body


async def fetch_once(port: int, method: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    connection = Connection(port)
    try:
        async with asyncio.timeout(timeout):
            return await connection.request(http_request(method, path))
    finally:
        connection.close()


# ---------------------------------------------------------------- requests


def bad_requests(vocab_size: int) -> dict[str, tuple[bytes, int]]:
    """Each kind of mistake: the request's bytes and the status the contract gives it."""
    text = PREDICT_PROMPTS[0]
    big = {"text": "turned on the " * (MAX_BODY // 14 + 16), "top_k": 5}
    return {
        "malformed_json": (http_request("POST", "/v1/predict", b'{"text": "turned on the", "top_k": 5'), 400),
        "missing_text": (json_request("/v1/predict", {"top_k": 5}), 422),
        "wrong_type": (json_request("/v1/predict", {"text": 5, "top_k": 5}), 422),
        "lone_surrogate": (json_request("/v1/predict", {"text": "\ud800 turned on the", "top_k": 5}), 422),
        "top_k_zero": (json_request("/v1/predict", {"text": text, "top_k": 0}), 422),
        "top_k_over_vocab": (json_request("/v1/predict", {"text": text, "top_k": vocab_size + 1}), 422),
        "temperature_zero": (json_request("/v1/generate", {"text": text, "temperature": 0}), 422),
        "top_p_over_one": (json_request("/v1/generate", {"text": text, "top_p": 1.5}), 422),
        "length_over_limit": (json_request("/v1/generate", {"text": text, "length": 5000}), 422),
        "body_too_large": (json_request("/v1/predict", big), 413),
        "unknown_path": (http_request("GET", "/v1/no-such-endpoint"), 404),
        "wrong_method": (http_request("GET", "/v1/predict"), 405),
    }


def good_answer(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        predictions = json.loads(body).get("predictions")
    except (ValueError, AttributeError):
        return False
    return isinstance(predictions, list) and len(predictions) > 0


def bad_answer(status: int, body: bytes) -> bool:
    """A 4xx whose body is a JSON object with "error"."""
    if not 400 <= status < 500:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, dict) and isinstance(answer.get("error"), str) and bool(answer["error"])


# ---------------------------------------------------------------- the load


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # s, good requests answered well in the span
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    bad_sent: int = 0
    bad_not_4xx: int = 0
    bad_statuses: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> status -> count
    bad_examples: list[str] = field(default_factory=list)
    last_answer: float = 0.0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(what)


@dataclass
class Start:
    """The common start of the clients: how many have warmed up, and the span once it is set."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    warmed: int = 0
    t0: float = 0.0
    end: float = 0.0


async def client(port: int, tally: Tally, good: list[bytes], bad: list[tuple[str, bytes, int]], start: Start,
                 seconds: float, seed: int, check: Callable[[int, bytes], bool]) -> None:
    """Warm up, wait for the common start, then send good requests back to back until the span
    ends, with `bad` spread evenly over the first 90% of it; unsent bad ones go after it."""
    loop = asyncio.get_running_loop()
    connection = Connection(port)
    rng = random.Random(seed)
    i = rng.randrange(len(good))
    try:
        for _ in range(WARMUP_REQUESTS):
            try:
                await connection.request(good[i % len(good)])
            except Exception:  # noqa: BLE001 - counted in the span if it persists
                pass
            i += 1
        start.warmed += 1
        await start.event.wait()
        t0, end = start.t0, start.end
        sent_bad = 0
        pace = len(bad) / (0.9 * seconds)  # bad requests per second of this client
        while (now := loop.time()) < end:
            if sent_bad < len(bad) and sent_bad < pace * (now - t0):
                await send_bad(connection, tally, bad[sent_bad])
                sent_bad += 1
                continue
            raw = good[i % len(good)]
            i += 1
            began = time.perf_counter()
            try:
                status, body = await connection.request(raw)
            except Exception as error:  # noqa: BLE001 - an error of the server or the connection
                tally.error(f"{type(error).__name__}: {error}")
                continue
            took = time.perf_counter() - began
            if check(status, body):
                tally.latencies.append(took)
                tally.last_answer = max(tally.last_answer, loop.time())
            else:
                tally.error(f"{status}: {body[:200]!r}")
        for item in bad[sent_bad:]:
            await send_bad(connection, tally, item)
    finally:
        connection.close()


async def send_bad(connection: Connection, tally: Tally, item: tuple[str, bytes, int]) -> None:
    kind, raw, expected = item
    tally.bad_sent += 1
    try:
        status, body = await connection.request(raw)
    except Exception as error:  # noqa: BLE001
        status, body = 0, f"{type(error).__name__}: {error}".encode()
    statuses = tally.bad_statuses.setdefault(kind, {})
    statuses[str(status)] = statuses.get(str(status), 0) + 1
    if not bad_answer(status, body):
        tally.bad_not_4xx += 1
        if len(tally.bad_examples) < 5:
            tally.bad_examples.append(f"{kind}: {status} {body[:200]!r}")


async def run_load(port: int, clients: int, seconds: float, good: list[bytes],
                   bad: list[tuple[str, bytes, int]], server_pid: int | None,
                   check: Callable[[int, bytes], bool] = good_answer) -> dict[str, Any]:
    """`clients` clients for `seconds` sending `good` in turn, answers judged by `check`; `bad`
    (shuffled) dealt out among them."""
    loop = asyncio.get_running_loop()
    shuffled = bad[:]
    random.Random(0).shuffle(shuffled)
    shares = [shuffled[c::clients] for c in range(clients)]
    tally, start = Tally(), Start()
    tasks = [asyncio.create_task(client(port, tally, good, shares[c], start, seconds, c, check))
             for c in range(clients)]
    while start.warmed + sum(t.done() for t in tasks) < clients:  # the warm-up
        await asyncio.sleep(0.02)
    cpu_server, cpu_client = _cpu_seconds(server_pid), time.process_time()
    start.t0 = loop.time()
    start.end = start.t0 + seconds
    start.event.set()
    try:
        async with asyncio.timeout(seconds + 10 * REQUEST_TIMEOUT + 60):
            results = await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        tally.error("the load did not finish in time")
    for r in results:
        if isinstance(r, BaseException):
            tally.error(f"a client failed: {type(r).__name__}: {r}")
    elapsed = max(tally.last_answer, start.end) - start.t0
    cpu = {"server_cpu_cores": None, "client_cpu_cores": (time.process_time() - cpu_client) / elapsed}
    after = _cpu_seconds(server_pid)
    if cpu_server is not None and after is not None:
        cpu["server_cpu_cores"] = (after - cpu_server) / elapsed
    ms = sorted(1000 * t for t in tally.latencies)
    result: dict[str, Any] = {
        "requests": len(ms),
        "requests_per_s": len(ms) / elapsed,
        "p50_ms": _percentile(ms, 50),
        "p99_ms": _percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else None,
        "max_ms": ms[-1] if ms else None,
        "errors": tally.errors,
        "seconds": elapsed,
        **{k: (round(v, 3) if v is not None else None) for k, v in cpu.items()},
        "bad_requests": tally.bad_sent,
        "bad_not_4xx": tally.bad_not_4xx,
    }
    if tally.bad_statuses:
        result["bad_statuses"] = dict(sorted(tally.bad_statuses.items()))
    if tally.error_examples:
        result["error_examples"] = tally.error_examples
    if tally.bad_examples:
        result["bad_examples"] = tally.bad_examples
    return result


def _percentile(sorted_values: list[float], q: int) -> float | None:
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[q - 1]


def _cpu_seconds(pid: int | None) -> float | None:
    """user + system CPU time of a process and its threads (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`python -m rnnkit serve` in a subprocess on a free loopback port, until `stop`."""

    def __init__(self, model_dir: Path, window_ms: float) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "rnnkit", "serve", str(model_dir), "--host", HOST, "--port", str(self.port),
                   "--batch-window-ms", str(window_ms)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    async def ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                status, _ = await fetch_once(self.port, "GET", "/healthz", timeout=5)
                if status == 200:
                    return
            except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the server did not answer /healthz within {STARTUP_TIMEOUT:g} s:\n{self.output()}")

    async def still_answering(self) -> bool:
        try:
            status, body = await fetch_once(self.port, "GET", "/healthz", timeout=10)
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError):
            return False
        return status == 200 and json.loads(body).get("status") == "ok" and self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


async def run_mode(mode: str, model_dir: Path, window_ms: float, clients: int, seconds: float,
                   bad_per_kind: int) -> dict[str, Any]:
    server = Server(model_dir, 0.0 if mode == "unbatched" else window_ms)
    try:
        await server.ready()
        status, body = await fetch_once(server.port, "GET", "/v1/model")
        if status != 200:
            raise RuntimeError(f"GET /v1/model answered {status}: {body[:300]!r}")
        vocab_size = json.loads(body)["vocab_size"]
        good = [json_request("/v1/predict", {"text": text, "top_k": 5}) for text in PREDICT_PROMPTS]
        bad: list[tuple[str, bytes, int]] = []
        if mode == "mixed":
            bad = [(kind, raw, expected) for kind, (raw, expected) in bad_requests(vocab_size).items()
                   for _ in range(bad_per_kind)]
        result: dict[str, Any] = {"batch_window_ms": 0.0 if mode == "unbatched" else window_ms}
        if mode == "batched":  # the same clients against an endpoint without model work
            ceiling = await run_load(server.port, clients, max(1.0, seconds / 10), [http_request("GET", "/healthz")],
                                     [], None, check=lambda status, body: status == 200)
            result["harness_ceiling"] = {k: ceiling[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "errors",
                                                                 "client_cpu_cores")}
        result |= await run_load(server.port, clients, seconds, good, bad, server.process.pid)
        result["still_answering"] = await server.still_answering()
        result["meets_goals"] = (result["errors"] == 0 and result["p99_ms"] is not None
                                 and result["p99_ms"] <= GOALS["p99_ms_at_most"]
                                 and result["requests_per_s"] >= GOALS["requests_per_s_at_least"])
        return result
    finally:
        server.stop()


# ---------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    """As throughput.py's, without importing torch into the load generator."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {**host_info(), "torch": torch_version}


def table(report: dict[str, Any]) -> str:
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [f"{'mode':<10} {'window':>7} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
             f"{'bad':>6} {'bad!4xx':>7} {'alive':>5} {'srv cpu':>7} {'cli cpu':>7}"]
    for mode, r in report["modes"].items():
        lines.append(f"{mode:<10} {r['batch_window_ms']:>5g}ms {r['requests']:>9} {num(r['requests_per_s'], '.0f'):>8} "
                     f"{num(r['p50_ms'], '.1f'):>7} {num(r['p99_ms'], '.1f'):>7} {r['errors']:>6} "
                     f"{r['bad_requests']:>6} {r['bad_not_4xx']:>7} {'yes' if r['still_answering'] else 'NO':>5} "
                     f"{num(r['server_cpu_cores'], '.2f'):>7} {num(r['client_cpu_cores'], '.2f'):>7}")
    for mode, r in report["modes"].items():
        if "harness_ceiling" in r:
            c = r["harness_ceiling"]
            lines.append(f"harness ceiling (GET /healthz, {mode} server): {c['requests_per_s']:.0f} requests/s, "
                         f"p99 {num(c['p99_ms'], '.1f')} ms")
        for example in r.get("error_examples", []) + r.get("bad_examples", []):
            lines.append(f"  {mode}: {example}")
    lines.append(f"goals: p99 <= {GOALS['p99_ms_at_most']:g} ms, >= {GOALS['requests_per_s_at_least']:g} requests/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a language-model directory (the issue: the household model)")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 32, 4 with --quick)")
    parser.add_argument("--seconds", type=float, default=None, help="timed span of each mode (default 30, 2 with --quick)")
    parser.add_argument("--bad", type=int, default=None, help="mixed: bad requests of each kind (default 1000, 20 with --quick)")
    parser.add_argument("--batch-window-ms", type=float, default=2.0, help="the batched modes' window (default %(default)s)")
    parser.add_argument("--modes", default="batched,unbatched,mixed", help="comma-separated: batched, unbatched, mixed")
    parser.add_argument("--quick", action="store_true", help="4 clients, 2 s, 20 bad requests of each kind (for the tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (progress to stderr)")
    args = parser.parse_args()
    clients = args.clients or (4 if args.quick else 32)
    seconds = args.seconds or (2.0 if args.quick else 30.0)
    bad = args.bad if args.bad is not None else (20 if args.quick else 1000)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("batched", "unbatched", "mixed")]
    if unknown or not modes or clients < 1 or seconds <= 0 or bad < 0 or args.batch_window_ms <= 0:
        parser.error(f"bad values: {', '.join(unknown) or '--clients, --seconds, --bad and --batch-window-ms must be positive'}")
    if not (args.model / "config.json").is_file():
        parser.error(f"{args.model} is not a model directory (no config.json)")

    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    machine = machine_info()
    say(f"serve.py: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}; {clients} clients, "
        f"{seconds:g} s per mode")
    report: dict[str, Any] = {"machine": machine, "model": str(args.model), "clients": clients, "seconds": seconds,
                              "bad_per_kind": bad, "goals": GOALS, "modes": {}}
    for mode in modes:
        result = asyncio.run(run_mode(mode, args.model, args.batch_window_ms, clients, seconds, bad))
        report["modes"][mode] = result
        say(f"  {mode}: {result['requests_per_s']:.0f} requests/s, p50 {result['p50_ms'] or 0:.1f} ms, "
            f"p99 {result['p99_ms'] or 0:.1f} ms, {result['errors']} errors"
            + (f", {result['bad_requests']} bad requests, {result['bad_not_4xx']} not 4xx" if mode == "mixed" else "")
            + ("" if result["still_answering"] else ", the server no longer answers"))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))


if __name__ == "__main__":
    main()
