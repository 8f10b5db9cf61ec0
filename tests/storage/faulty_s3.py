"""A faulty S3 endpoint for tests: moto's app behind a middleware that fails or holds chosen requests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator

HOLD_LIMIT_S = 300  # a held request goes on after this at the latest (a safety net, not a measurement)


class FaultyS3:
    """Moto's S3 app behind a WSGI middleware that fails chosen requests with 503 ServiceUnavailable,
    holds them until ``release`` is set, or cuts their response body short (half of it, then the
    connection is closed, as a dropped connection would).

    It serves the same in-process moto backend as the session's server (so what it
    accepted is visible there) and records every request (method, path, query).
    ``fail_when(method, path, query)`` decides per request; the body is drained first.
    """

    ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
             b"<Message>injected failure</Message></Error>")

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server
        self.app = DomainDispatcherApplication(create_backend_app)
        self.requests: list[tuple[str, str, str, int]] = []  # (method, path, query, status)
        self.fail_when: Callable[[str, str, str], bool] = lambda method, path, query: False
        self.hold_when: Callable[[str, str, str], bool] = lambda method, path, query: False
        self.cut_when: Callable[[str, str, str], bool] = lambda method, path, query: False
        self.release = threading.Event()  # held requests go on when this is set
        self.server = make_server("127.0.0.1", 0, self, threaded=True, request_handler=MotoRequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __call__(self, environ, start_response):
        method, path, query = environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("QUERY_STRING", "")
        if self.hold_when(method, path, query):
            self.release.wait(HOLD_LIMIT_S)
        if self.fail_when(method, path, query):
            stream, left = environ["wsgi.input"], int(environ.get("CONTENT_LENGTH") or 0)
            while left > 0:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            self.requests.append((method, path, query, 503))
            start_response("503 Service Unavailable", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(self.ERROR)))])
            return [self.ERROR]
        if self.cut_when(method, path, query):
            self.requests.append((method, path, query, -1))
            return self._cut(self.app(environ, start_response), environ["werkzeug.socket"])
        self.requests.append((method, path, query, 200))
        return self.app(environ, start_response)

    @staticmethod
    def _cut(body: Iterable[bytes], sock: socket.socket) -> Iterator[bytes]:
        """The first half of ``body``, then the connection shut (its Content-Length promised more)."""
        data = b"".join(body)
        yield data[: len(data) // 2]
        sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.thread.join()

    def parts(self) -> list[tuple[str, str, str, int]]:
        return [r for r in self.requests if r[0] == "PUT" and "partNumber=" in r[2]]
