"""A recorder on the wire: a TCP proxy in front of the test server that reads every message
clients send (PostgreSQL frontend protocol 3) and records the statements of each round trip.

A round trip ends with a simple-protocol Query (which may hold several statements, as in
"BEGIN; SELECT ...") or with a Sync after extended-protocol messages (Parse/Bind/Execute);
its statements are the Query's text, or the text of each statement Executed, prepared ones
included (psycopg prepares a statement it has run five times). What is recorded is what
really went to the server, whatever the driver, the ORM or the pool did on the way.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from dataclasses import dataclass, field

SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102


@dataclass
class Session:
    """What one client connection sent: its round trips, each the statements it ran."""

    trips: list[list[str]] = field(default_factory=list)
    _pending: list[str] = field(default_factory=list)
    _statements: dict[str, str] = field(default_factory=dict)
    _portals: dict[str, str] = field(default_factory=dict)
    _buffer: bytes = b""
    _started: bool = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if not self._started:  # untyped: SSLRequest, GSSENCRequest, StartupMessage
                if len(self._buffer) < 8:
                    return
                (length, code) = struct.unpack("!ii", self._buffer[:8])
                if len(self._buffer) < length:
                    return
                self._buffer = self._buffer[length:]
                self._started = code not in (SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST)
                continue
            if len(self._buffer) < 5:
                return
            kind, length = self._buffer[:1], struct.unpack("!i", self._buffer[1:5])[0]
            if len(self._buffer) < 1 + length:
                return
            body, self._buffer = self._buffer[5:1 + length], self._buffer[1 + length:]
            self._message(kind, body)

    def _message(self, kind: bytes, body: bytes) -> None:
        strings = body.split(b"\0")
        if kind == b"Q":
            self.trips.append([strings[0].decode()])
        elif kind == b"P":  # Parse: statement name, query text
            self._statements[strings[0].decode()] = strings[1].decode()
        elif kind == b"B":  # Bind: portal name, statement name
            self._portals[strings[0].decode()] = self._statements.get(strings[1].decode(), "?")
        elif kind == b"E":  # Execute: portal name
            self._pending.append(self._portals.get(strings[0].decode(), "?"))
        elif kind == b"S":
            self.trips.append(self._pending)
            self._pending = []


class Wire:
    """The proxy: ``Wire(host, port)`` listens on 127.0.0.1:``wire.port``; connect there
    instead of to the server. ``trips()`` lists every round trip of every connection made
    through it since the last ``clear()``, in the order the connections were opened."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.sessions: list[Session] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def trips(self) -> list[list[str]]:
        return [trip for session in self.sessions for trip in session.trips]

    def clear(self) -> None:
        for session in self.sessions:
            session.trips.clear()

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            session = Session()
            self.sessions.append(session)
            threading.Thread(target=self._pump, args=(client, session), daemon=True).start()

    def _pump(self, client: socket.socket, session: Session) -> None:
        server = socket.create_connection(self.upstream)
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [])
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        session.feed(data)
                        server.sendall(data)
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()
