"""HTTP/1.1 over a plain socket: requests with any bytes (what `requests` refuses to send: non-ASCII
header values, a lying Content-Length, a body sent slowly), and the reply read with http.client."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    seconds: float  # from the first byte sent to the last byte read

    def json(self) -> object:
        return json.loads(self.body)


def request_bytes(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    """The request as sent: no header is added, so Host, Content-Length and framing are the caller's."""
    lines = [method + b" " + target + b" HTTP/1.1", *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def connect(port: int, timeout: float) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_reply(sock: socket.socket, started: float, method: bytes = b"POST") -> Reply:
    """The next response on `sock` (its body read by Content-Length or chunks, or to the close)."""
    response = http.client.HTTPResponse(sock, method=method.decode("latin-1"))
    response.begin()
    body = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return Reply(response.status, headers, body, time.monotonic() - started)


def exchange(port: int, data: bytes, timeout: float = 30.0, method: bytes = b"POST") -> Reply:
    """Send `data` on a new connection and read the reply."""
    started = time.monotonic()
    with connect(port, timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading all of it: its reply is still there
        return read_reply(sock, started, method)


def is_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closed the connection within `timeout` seconds (reading whatever it sent)."""
    sock.settimeout(timeout)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
