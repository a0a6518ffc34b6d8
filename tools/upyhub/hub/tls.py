"""Server TLS contexts for the device endpoint and the service API.

TLS 1.2 minimum. The device endpoint asks for (but does not require) a client certificate: X.509 devices
send one, SAS devices do not. OpenSSL only accepts client certificates that chain to a trust anchor, so the
anchors are every hub CA generation plus DATA/pki/trust/ (self-signed device certificates and device CAs
registered through the CLI); the registry then decides which device a certificate is.

The SNI callback, run at every handshake, swaps in fresh contexts when the active CA generation or the
trust folder changed, so `upyhub hub rotate-ca --activate` and new X.509 devices take effect without a
restart.
"""
import ssl

from upyhub.hub import pki as pki_mod


class ServerTLS:
    def __init__(self, pki):
        self.pki = pki
        self._key = None
        self._mqtt = self._https = None
        self.refresh()
        # the contexts handed to the listeners: their callback may switch each handshake to the current ones
        self.mqtt_listener = self._mqtt
        self.https_listener = self._https

    def _state_key(self):
        trust = self.pki.trust_dir
        files = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(trust.glob("*.pem"))) if trust.exists() else ()
        return self.pki.active, tuple(self.pki.generations()), files

    def _build(self, client_certs):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        cert, key = self.pki.server_paths()
        ctx.load_cert_chain(str(cert), str(key))
        if client_certs:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a trusted self-signed leaf is its own anchor
            anchors = [pki_mod.cert_pem(c) for c in self.pki.all_cas()] + self.pki.trust_pems()
            ctx.load_verify_locations(cadata=b"".join(anchors).decode())
        ctx.sni_callback = self._sni
        return ctx

    def refresh(self):
        key = self._state_key()
        if key != self._key:
            self._mqtt, self._https = self._build(True), self._build(False)
            self._key = key

    def _sni(self, sslobj, server_name, ctx):
        try:
            self.refresh()
        except OSError:
            return None  # keep the current contexts if the files are mid-update
        wanted = self._mqtt if ctx.verify_mode != ssl.CERT_NONE else self._https
        if wanted is not ctx:
            sslobj.context = wanted
        return None
