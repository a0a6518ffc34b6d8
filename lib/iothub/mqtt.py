# The one adapter over umqtt.simple: every umqtt version shim and every use of its private
# members is here. umqtt makes the TCP socket and sends CONNECT over our TLS (transport) and
# reads the CONNACK; from then on iothub.wire owns the connection. The session loads this module
# (and umqtt) only to connect, and unloads both once connected: ~10 KB of code off the heap.
import sys

from umqtt.simple import MQTTClient, MQTTException

from iothub import handshake, transport


class Refused(Exception):
    # CONNACK with a non-zero return code: .code
    def __init__(self, code):
        super().__init__(code)
        self.code = code


class Failed(Exception):
    # CONNECT did not complete. .tls: a TLS session with the hub had been established (the roots
    # did their job); .memory: the heap ran out.
    def __init__(self, msg, tls, memory=False):
        super().__init__(msg)
        self.tls = tls
        self.memory = memory


class _Wrapper:
    # What umqtt hands the TCP socket to. 1.3.4 imports `ussl` and calls wrap_socket(sock, **params);
    # 1.4+ calls <ssl>.wrap_socket(sock, server_hostname=<connect address>): ours ignores that name
    # and verifies the hub's. The plain socket is kept: after the CONNACK it is what we poll.
    def __init__(self, params):
        self.params = params
        self.raw = None
        self.ok = False

    def wrap_socket(self, sock, server_hostname=None, **kw):
        self.raw = sock
        s = handshake.wrap_socket(sock, **self.params)
        self.ok = True
        return s


def _install_ussl(wrapper):
    # umqtt 1.3.4 does `import ussl`: a module whose wrap_socket is this connection's wrapper.
    # (Ports that still have a real ussl would verify with it but lose the TLS version check and
    # timeouts: ours replaces it for umqtt's import only.)
    class _M:
        pass

    m = _M()
    m.wrap_socket = wrapper.wrap_socket
    sys.modules["ussl"] = m


def connect(client_id, address, port, user, password, keepalive, tls_params):
    # -> (TLS socket, plain socket), connected (CONNACK 0). Raises transport.TLSError (nothing was
    # sent), Refused or Failed; never umqtt's bare AssertionError/IndexError/TypeError.
    w = _Wrapper(tls_params)
    _install_ussl(w)
    try:  # 1.3.4 and 1.5+ take ssl_params; 1.4 only `ssl`
        c = MQTTClient(client_id, address, port, user, password, keepalive, ssl=w, ssl_params=tls_params)
    except TypeError:
        c = MQTTClient(client_id, address, port, user, password, keepalive, ssl=w)
    try:
        try:
            c.connect(True, tls_params["timeout"])  # 1.5+: a timeout for the TCP connect too
        except TypeError:
            if c.sock is not None:  # raised inside connect (a short CONNACK read), not by its signature
                raise
            c.connect()
    except handshake.TLSError:
        _close(c.sock)
        raise
    except MQTTException as e:
        _close(c.sock)
        raise Refused(e.args[0] if e.args else 0)
    except MemoryError:
        _close(c.sock)
        raise Failed("not enough memory", w.ok, True)
    except (AssertionError, IndexError, TypeError):  # umqtt reading a CONNACK that never came whole
        _close(c.sock)
        raise Failed("the server closed the connection or sent no CONNACK", w.ok)
    except OSError as e:
        _close(c.sock)
        code = e.args[0] if e.args else None
        if w.ok and code in (11, 110, 116):  # EAGAIN (unix), ETIMEDOUT (lwIP, newlib)
            raise Failed("no CONNACK within %s s" % tls_params["timeout"], True)
        raise Failed(transport.why(e), w.ok, code == 12)
    finally:
        sys.modules.pop("ussl", None)
    if w.raw is None:  # a umqtt that did its own TLS: never accept an unverified session
        _close(c.sock)
        raise handshake.TLSError("umqtt did not use the verifying wrapper", "verify")
    s = c.sock
    c.sock = None  # umqtt is done: nothing of it holds the connection
    return s, w.raw


def _close(s):
    try:
        if s is not None:
            s.close()
    except Exception:
        pass
