"""Server TLS for the device endpoint and the service API.

TLS 1.2 minimum on both. The device endpoint does what IoT Hub does: it asks every client for a
certificate and accepts whatever it is sent (or nothing), so the TLS layer never decides who a device
is; auth.device() does, from the certificate and the chain the device sent (thumbprints for
`selfSigned`, a chain to a registered CA for `certificateAuthority`). No device certificate is ever a
trust anchor. Python's ssl module cannot accept a client certificate it does not trust, so this
endpoint's TLS is OpenSSL through pyOpenSSL, handed to asyncio as an SSLContext whose wrap_bio()
returns an ssl.SSLObject look-alike (asyncio's own SSL protocol drives it over memory BIOs).

The contexts are rebuilt when the active CA generation changes, so `upyhub hub rotate-ca --activate`
takes effect for new connections without a restart.
"""
import ssl

from OpenSSL import SSL

from upyhub.hub import pki as pki_mod


def _accept_any(conn, cert, errno, depth, ok):
    return True  # the hub, not OpenSSL, decides what a client certificate is worth (auth.device)


class ServerTLS:
    def __init__(self, pki):
        self.pki = pki
        self._key = None
        self._device = self._https = None
        self.refresh()
        self.mqtt_listener = DeviceContext(self)
        # the service API's context: its SNI callback may switch each handshake to the current one
        self.https_listener = self._https

    def _build_https(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        cert, key = self.pki.server_paths()
        ctx.load_cert_chain(str(cert), str(key))
        ctx.sni_callback = self._sni
        return ctx

    def _build_device(self):
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        cert, key = self.pki.server_paths()
        ctx.use_certificate_chain_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.check_privatekey()
        ctx.set_verify(SSL.VERIFY_PEER, _accept_any)  # ask for a certificate, require none
        ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.set_session_id(b"upyhub-local-hub")
        return ctx

    def refresh(self):
        key = (self.pki.active, tuple(self.pki.generations()))
        if key != self._key:
            self._device, self._https = self._build_device(), self._build_https()
            self._key = key

    def current_device_context(self):
        try:
            self.refresh()
        except (OSError, ValueError, SSL.Error):
            pass  # keep the current contexts while the files are mid-update
        return self._device

    def _sni(self, sslobj, server_name, ctx):
        try:
            self.refresh()
        except (OSError, ValueError, ssl.SSLError):
            return None
        if self._https is not ctx:
            sslobj.context = self._https
        return None


class DeviceContext(ssl.SSLContext):
    """What asyncio needs of an SSLContext for a server connection: wrap_bio(), backed by pyOpenSSL."""

    def __new__(cls, tls):
        return super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)

    def __init__(self, tls):
        self._tls = tls

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return DeviceTLSObject(self._tls.current_device_context(), incoming, outgoing)


class DeviceTLSObject:
    """An ssl.SSLObject look-alike over a pyOpenSSL connection: the calls asyncio's SSL protocol makes.

    Bytes move between asyncio's memory BIOs and OpenSSL's own before and after every call; OpenSSL's
    errors come out as the ssl module's (SSLWantReadError and so on), as asyncio expects.
    """

    def __init__(self, context, incoming, outgoing):
        self._conn = SSL.Connection(context, None)
        self._conn.set_accept_state()
        self._in, self._out = incoming, outgoing
        self._eof_fed = False

    def _call(self, fn, *args):
        data = self._in.read()
        if data:
            self._conn.bio_write(data)
        if self._in.eof and not self._eof_fed:
            self._eof_fed = True
            self._conn.bio_shutdown()
        try:
            return fn(*args)
        except SSL.WantReadError:
            raise ssl.SSLWantReadError("want read") from None
        except SSL.WantWriteError:
            raise ssl.SSLWantWriteError("want write") from None
        except SSL.ZeroReturnError:
            raise ssl.SSLZeroReturnError("TLS connection closed") from None
        except SSL.SysCallError:
            raise ssl.SSLEOFError("the client closed the connection during TLS") from None
        except SSL.Error as exc:
            raise ssl.SSLError(_reason(exc)) from None
        finally:
            self._flush()

    def _flush(self):
        while True:
            try:
                data = self._conn.bio_read(65536)
            except SSL.WantReadError:
                return
            if not data:
                return
            self._out.write(data)

    def do_handshake(self):
        self._call(self._conn.do_handshake)

    def read(self, n=1024, buffer=None):
        try:
            if buffer is not None:
                return self._call(self._conn.recv_into, buffer, n)
            return self._call(self._conn.recv, n)
        except ssl.SSLZeroReturnError:
            return 0 if buffer is not None else b""  # close_notify: end of stream, as ssl.SSLObject reports it

    def write(self, data):
        return self._call(self._conn.send, bytes(data))

    def unwrap(self):
        if not self._call(self._conn.shutdown):
            self._call(self._conn.shutdown)  # close_notify sent; wait for the client's (SSLWantReadError)

    def pending(self):
        return self._conn.pending()

    def getpeercert(self, binary_form=False):
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if not binary_form:
            return {}  # not verified by TLS: nothing to report in the ssl module's dict form
        return None if cert is None else pki_mod.der(cert)

    def peer_chain(self):
        """The certificates the client sent after its own (intermediates), as cryptography objects."""
        return list(self._conn.get_peer_cert_chain(as_cryptography=True) or [])

    def cipher(self):
        return self._conn.get_cipher_name(), self._conn.get_protocol_version_name(), self._conn.get_cipher_bits()

    def compression(self):
        return None

    def version(self):
        return self._conn.get_protocol_version_name()

    def selected_alpn_protocol(self):
        return None


def _reason(exc):
    """OpenSSL's error stack as one short line (library:function:reason tuples)."""
    try:
        parts = [e[2] for e in exc.args[0] if len(e) > 2 and e[2]]
    except (IndexError, TypeError):
        parts = []
    return ", ".join(parts) or type(exc).__name__
