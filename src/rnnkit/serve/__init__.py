"""`rnnkit serve`: a model directory behind an HTTP API (FastAPI on uvicorn), with a web page."""

from .app import create_app

__all__ = ["create_app"]
