"""Micro-batching: requests that arrive within a short window share one forward pass.

A recurrent model reads 64 prompts padded into one (T, 64) batch in little more time than one
prompt (the matrix products just get wider), so under load the server collects what comes within
`window` seconds (up to `max_batch` items), runs them together on a worker thread, and hands each
request its own answer. A lone request waits at most the window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """`await batcher(item)` -> run([..., item, ...])[its index]; `run` maps a list of items to a
    list of results, in order, and is called on a worker thread, one batch at a time. An exception
    from `run` reaches every request of its batch. With window 0 each item runs alone."""

    def __init__(self, run: Callable[[Sequence[Item]], Sequence[Result]], window: float, max_batch: int) -> None:
        self.run, self.window, self.max_batch = run, window, max_batch
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, item: Item) -> Result:
        if self.window <= 0:
            return (await asyncio.to_thread(self.run, [item]))[0]
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a queue and its worker belong to one event loop: made in each
            self._queue, self._loop = asyncio.Queue(), loop
            self._worker = asyncio.create_task(self._serve())
        future: asyncio.Future[Result] = loop.create_future()
        assert self._queue is not None
        await self._queue.put((item, future))
        return await future

    async def _serve(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            live = [(item, future) for item, future in batch if not future.done()]  # cancelled: timed out
            if not live:
                continue
            try:
                results: Sequence[Any] = await asyncio.to_thread(self.run, [item for item, _ in live])
            except Exception as error:  # noqa: BLE001 - each request of the batch gets it
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = self._loop = None
