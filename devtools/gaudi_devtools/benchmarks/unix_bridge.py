"""A byte pipe between a TCP port on loopback and a Unix socket, one connection at a time
each way. Two of them carry the Kubeflow operator's API traffic out of its own network
namespace (where loopback is its only interface) to the host's kube-apiserver:

    netns: 127.0.0.1:PORT --tcp-to-unix--> SOCKET --unix-to-tcp--> host: 127.0.0.1:PORT

TLS passes through untouched, so the API server's certificate (which covers 127.0.0.1) and
the client certificate work as on the host. Standard library only: it runs as a script
(`python unix_bridge.py tcp-to-unix PORT SOCKET`) inside the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

LOOPBACK = "127.0.0.1"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connect: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    try:
        up_reader, up_writer = await connect
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    for w in (writer, up_writer):
        w.close()


async def tcp_to_unix(port: int, socket_path: str) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _splice(r, w, asyncio.ensure_future(asyncio.open_unix_connection(socket_path)))

    server = await asyncio.start_server(handle, LOOPBACK, port)
    async with server:
        await server.serve_forever()


async def unix_to_tcp(socket_path: str, port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _splice(r, w, asyncio.ensure_future(asyncio.open_connection(LOOPBACK, port)))

    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = await asyncio.start_unix_server(handle, socket_path)
    os.chmod(socket_path, 0o600)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    usage = "usage: unix_bridge.py tcp-to-unix PORT SOCKET | unix-to-tcp SOCKET PORT"
    if len(argv) != 3:
        raise SystemExit(usage)
    mode, a, b = argv
    if mode == "tcp-to-unix":
        asyncio.run(tcp_to_unix(int(a), b))
    elif mode == "unix-to-tcp":
        asyncio.run(unix_to_tcp(a, int(b)))
    else:
        raise SystemExit(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
