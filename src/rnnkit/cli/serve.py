"""`rnnkit serve`: a model directory behind an HTTP API, with a web page at /."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import sys
from pathlib import Path

from ..errors import RnnkitError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: a JSON API (docs at /docs) and a web page at /")
    p.add_argument("model", type=Path, help="model directory (a language model, translator or captioner)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="next-word requests arriving within this window share one forward pass; 0: off (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=64, help="requests in one batch at most (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a request may run (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..serve import create_app

    if not 0 <= args.port <= 65535:
        raise RnnkitError(f"--port must be between 0 and 65535, got {args.port}")
    app = create_app(args.model, args.batch_window_ms, args.max_batch, args.timeout)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"rnnkit: warning: listening on {args.host}, reachable from other machines; the server has no "
              "authentication", file=sys.stderr)
    print(f"rnnkit: serving {args.model} on http://{args.host}:{args.port}/ (API docs at /docs; Ctrl-C stops)",
          file=sys.stderr)
    gc.collect()
    gc.freeze()  # the model and libraries, hundreds of thousands of objects, out of every later collection
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
