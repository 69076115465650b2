"""A TCP proxy on loopback that can start failing the traffic it carries.

Put it in front of the API server for one client only (the operator's leader election,
with `--leader-election-server`), and that client's requests can be slowed or dropped
while the process's other clients still reach the server directly: the "renewals time
out while other calls still go through" fault. TLS passes through untouched (the proxy
never sees inside it), so the client checks the server's own certificate.

Modes (switch any time; they apply to connections already open):
- "pass": forward both ways;
- "delay": forward each chunk `delay` seconds late (in order);
- "drop": read and discard both ways, never close: requests hang until the client gives
  up, and nothing sent meanwhile ever reaches the server.

It runs its own event loop in a daemon thread, so a synchronous test can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

Mode = Literal["pass", "delay", "drop"]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.mode: Mode = "pass"
        self.delay = 0.0
        self.dropped = 0  # bytes discarded
        self.forwarded = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control (any thread) --------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, self.host, 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        self.delay = delay
        self.mode = mode

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the proxy (its own loop) ----------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            if self.mode == "drop":
                self.dropped += len(data)
                continue
            if self.mode == "delay" and self.delay > 0:
                await asyncio.sleep(self.delay)
                if self.mode == "drop":  # switched while this chunk waited
                    self.dropped += len(data)
                    continue
            dst.write(data)
            self.forwarded += len(data)
            await dst.drain()
        with contextlib.suppress(OSError):
            if dst.can_write_eof():
                dst.write_eof()
