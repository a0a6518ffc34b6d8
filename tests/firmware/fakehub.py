"""A hostile hub for the firmware tests: a CPython TLS server holding a certificate the device trusts,
speaking just enough MQTT 3.1.1 (CONNACK, SUBACK, PUBACK, PINGRESP) to keep a device connected, and
sending whatever a test scripts (oversized packets, bad topics, stalls). The local hub refuses to send
such things; a compromised or buggy server would not."""
import socket
import ssl
import struct
import threading
import time


def packet(first, body):
    """An MQTT packet: fixed header byte, remaining length, body."""
    n = len(body)
    out = bytearray([first])
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def publish(topic, body, qos=0, pid=1):
    t = topic if isinstance(topic, bytes) else topic.encode()
    var = struct.pack("!H", len(t)) + t + (struct.pack("!H", pid) if qos else b"")
    return packet(0x30 | (qos << 1), var + body)


class Conn:
    """One device connection as the script sees it."""

    def __init__(self, sock):
        self.sock = sock
        self.pubacks = []  # packet ids the device acknowledged
        self.published = []  # (topic, body) the device sent
        self.client_id = None
        self.silent = False  # True: read everything, answer nothing (a frozen hub)
        self.filters = 0  # topic filters in the first SUBSCRIBE
        self.closed = threading.Event()

    def send(self, data):
        self.sock.sendall(data)


class FakeHub:
    """FakeHub(ctx, script): script(conn) runs after the SUBACK, in the connection's thread, while
    the device's packets keep being answered in another. .connections counts TLS sessions."""

    def __init__(self, ctx, script=None):
        self.ctx = ctx
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _read_packet(self, s):
        first = _exact(s, 1)[0]
        n, shift = 0, 0
        while True:
            b = _exact(s, 1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return first, _exact(s, n)

    def _handle(self, raw):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        conn = Conn(s)
        self.connections.append(conn)
        try:
            first, body = self._read_packet(s)
            assert first == 0x10, first
            conn.client_id = body[12:12 + struct.unpack("!H", body[10:12])[0]].decode()
            s.sendall(b"\x20\x02\x00\x00")
            first, body = self._read_packet(s)
            assert first & 0xF0 == 0x80, first
            nfilters = 0
            i = 2
            while i < len(body):
                i += 2 + struct.unpack("!H", body[i:i + 2])[0] + 1
                nfilters += 1
            conn.filters = nfilters
            s.sendall(packet(0x90, body[:2] + b"\x01" * nfilters))
            if self.script:
                threading.Thread(target=self._script, args=(conn,), daemon=True).start()
            while True:
                first, body = self._read_packet(s)
                kind = first & 0xF0
                if conn.silent:
                    continue
                if kind == 0x30:
                    tlen = struct.unpack("!H", body[:2])[0]
                    topic = body[2:2 + tlen].decode()
                    qos = (first >> 1) & 3
                    conn.published.append((topic, body[2 + tlen + (2 if qos else 0):]))
                    if qos:
                        s.sendall(b"\x40\x02" + body[2 + tlen:4 + tlen])
                elif kind == 0x40:
                    conn.pubacks.append(struct.unpack("!H", body[:2])[0])
                elif kind == 0xC0:
                    s.sendall(b"\xd0\x00")
                elif kind == 0xE0:
                    return
        except (OSError, ssl.SSLError, AssertionError, IndexError):
            return
        finally:
            conn.closed.set()
            try:
                s.close()
            except OSError:
                pass

    def _script(self, conn):
        try:
            self.script(conn)
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self._stop = True
        self.sock.close()


def _exact(s, n):
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise OSError("closed")
        out += chunk
    return bytes(out)


def wait(cond, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)
