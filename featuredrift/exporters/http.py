"""HTTP requests with a deadline for the whole request, not for each socket read.

A socket timeout bounds each read; a server that trickles one byte every half second never
trips it and holds a worker forever. Here a timer shuts the connection's socket down when the
deadline passes, so every request ends by then, answered or not.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
from urllib.parse import unquote, urlsplit

MAX_BODY_BYTES = 1 << 16


class DeadlineExceeded(TimeoutError):
    """The server did not answer completely within the deadline."""


class HttpError(OSError):
    """The server answered with an error status."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{url}: HTTP {status} {reason}")
        self.status = status


def request(
    url: str,
    method: str = "POST",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    deadline_s: float,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """Send one request; return the body of a 2xx answer, raise HttpError, DeadlineExceeded or OSError."""
    from featuredrift.monitor.config import mask_url

    parts = urlsplit(url)
    shown = mask_url(url)  # messages never carry credentials or the path's tokens
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"URL: expected http(s)://host[:port]/path, found {shown!r}")
    headers = dict(headers or {})
    if parts.username is not None and "Authorization" not in headers:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=deadline_s, context=ssl_context
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=deadline_s)
    expired = threading.Event()
    sockets: list[socket.socket] = []  # the connection drops its reference once a response owns it

    def abort() -> None:
        expired.set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(deadline_s, abort)
    timer.daemon = True
    timer.start()
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.connect()  # bounded by the socket timeout, itself the deadline
        sockets.append(connection.sock)
        if expired.is_set():
            abort()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(MAX_BODY_BYTES)
        if expired.is_set():
            raise DeadlineExceeded(f"{shown}: no complete answer within {deadline_s:g}s")
        if response.status >= 400:
            raise HttpError(shown, response.status, response.reason)
        return data
    except (OSError, http.client.HTTPException) as error:
        if expired.is_set() and not isinstance(error, DeadlineExceeded):
            raise DeadlineExceeded(f"{shown}: no complete answer within {deadline_s:g}s") from error
        if isinstance(error, http.client.HTTPException):
            raise OSError(f"{shown}: {type(error).__name__}: {error}") from error
        raise
    finally:
        timer.cancel()
        connection.close()
