"""cheroot connections whose response writes go straight to the socket.

cheroot's writer (``cheroot.makefile.BufferedWriter``, on the pure-Python ``_pyio``) copies
every write into a bytearray, copies that again into a new bytes object for each ``send``,
and moves what is left to the front after every partial send: three or more copies of each
byte of a response, under the interpreter lock. A /metrics body is 12 MB at 10,000 computers
and 60 MB at 50,000, and Prometheus servers scrape it concurrently. This writer hands the
caller's buffer to ``socket.sendall``, which sends from it in place (the lock released while
the kernel takes it), so a cached body leaves the process without a copy. It works alike on
plain and TLS sockets (``ssl.SSLSocket.sendall``).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from cheroot import server as cheroot_server
from cheroot.makefile import StreamWriter


class SendallWriter(StreamWriter):
    """A cheroot ``StreamWriter`` that sends each write whole with ``sendall``.

    Nothing is buffered: every write (``write``, and ``writelines`` through it) goes to the
    socket at once, so the inherited buffer stays empty and bytes cannot be reordered.
    """

    def __init__(self, sock: socket.socket, mode: str = "wb", bufsize: int = 8192) -> None:
        super().__init__(sock, mode, bufsize)
        self._socket = sock
        self._lock = threading.Lock()  # one response's bytes at a time, never interleaved

    # cheroot's stubs give BufferedWriter.write and StreamWriter.write different signatures
    def write(self, val: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed connection")
        size = len(val)
        with self._lock:
            self._socket.sendall(val)
        self.bytes_written += size
        return size


class Connection(cheroot_server.HTTPConnection):
    """cheroot's connection, writing responses with ``SendallWriter``."""

    def __init__(self, server: Any, sock: socket.socket, *args: Any) -> None:
        super().__init__(server, sock, *args)
        self.wfile = SendallWriter(sock, "wb", self.wbufsize)
