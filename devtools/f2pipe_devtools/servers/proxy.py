"""A TCP proxy that a test can cut and restore: a network outage without losing the server.

Cutting closes every proxied connection and the listening socket, so clients see
"connection refused" exactly as if the server were down, while the server behind it keeps
its data (Tansu's memory storage would not survive a real restart).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from f2pipe_devtools.servers.base import free_port


class TcpProxy:
    def __init__(self, target_port: int, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = port or free_port(host)
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by cut()/stop()
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            self._close(sock)

    def restore(self, timeout: float = 10.0) -> None:
        """Listen again, once the port is free: a closed listener stays bound while its
        accept thread waits, until a connection wakes it."""
        deadline = time.monotonic() + timeout
        while self._listener is None:
            try:
                self.start()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                pass
            time.sleep(0.1)

    stop = cut
