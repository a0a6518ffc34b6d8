"""The hub's test PKI: root CAs (with generations, for rotation) and the server certificate.

Layout under DATA/pki/:
  ca-N.pem, ca-N.key          root CA of generation N (never deleted: devices may still pin it)
  server-N.pem, server-N.key  server certificate issued by CA N (chain: leaf + CA N)
  state.json                  {"active": N, "hostname": "...", "dps_hostname": "..."}
  cas/*.pem                   device CAs registered with `upyhub hub ca --trust` (certificateAuthority devices)

Device certificates are never stored here and never trusted as issuers: a `selfSigned` device is its
thumbprint in the registry, nothing more.

Keys are ECDSA P-256 / SHA-256: what mbedtls 2.28 (MicroPython's TLS) and the Azure SDK both handle.
"""
import datetime
import hashlib
import ipaddress
import json
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

from upyhub.errors import UsageError
from upyhub.hub import HubError
from upyhub.files import write_atomic

DEFAULT_HOSTNAME = "localhub.azure-devices.net"
DEFAULT_DPS_HOSTNAME = "global.azure-devices-provisioning.net"  # the local DPS's name (Azure's global endpoint)
CA_DAYS = 3650
LEAF_DAYS = 825


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "upyhub local hub"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(cn, issuer, key, days):
    """A certificate for `cn` and key: issuer, fresh serial, valid from an hour ago (clock skew) for `days`."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days)))


def make_ca(cn):
    key = _key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (_builder(cn, _name(cn), key, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert, ca_key, cn, *, server_names=(), client=False, days=LEAF_DAYS):
    """A leaf certificate from a CA: a TLS server (SANs) or a TLS client (device, CN = device id)."""
    key = _key()
    builder = (_builder(cn, ca_cert.subject, key, days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if server_names:
        sans = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def self_signed_client(cn, days=LEAF_DAYS):
    """A self-signed device certificate (IoT Hub's `selfSigned` authentication)."""
    key = _key()
    cert = (_builder(cn, _name(cn), key, days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def is_ca(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def thumbprints(der):
    """(SHA-1, SHA-256) hex thumbprints of a DER certificate, upper case as Azure shows them."""
    return hashlib.sha1(der).hexdigest().upper(), hashlib.sha256(der).hexdigest().upper()


def verify_chain(cert, chain, anchors):
    """Check `cert` chains, through the intermediates in `chain` (sent by the client, at most 8 used), to
    one of `anchors`: OpenSSL checks signatures, validity dates, CA:TRUE and path lengths of every issuer.
    An anchor may be an intermediate CA (it is trusted as registered). Raises ValueError with OpenSSL's
    reason."""
    store = crypto.X509Store()
    for ca in anchors:
        store.add_cert(crypto.X509.from_cryptography(ca))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    leaf_der = der(cert)
    untrusted = [crypto.X509.from_cryptography(c) for c in chain if der(c) != leaf_der][:8]
    try:
        crypto.X509StoreContext(store, crypto.X509.from_cryptography(cert), untrusted).verify_certificate()
    except crypto.X509StoreContextError as e:
        raise ValueError(e.args[0] if e.args else "invalid") from None


def common_names(cert):
    return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def load_cert(pem):
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise UsageError("not a PEM certificate") from None


class PKI:
    """The CA generations and server certificates under DATA/pki."""

    def __init__(self, data_dir):
        self.dir = pathlib.Path(data_dir) / "pki"
        self.cas_dir = self.dir / "cas"
        self.state_path = self.dir / "state.json"

    def exists(self):
        return self.state_path.exists()

    def state(self):
        if not self.exists():
            raise HubError("no hub PKI in %s: run `upyhub hub init` first" % self.dir.parent)
        return json.loads(self.state_path.read_text())

    def _save(self, state):
        write_atomic(self.state_path, json.dumps(state, indent=1).encode())

    @property
    def hostname(self):
        return self.state()["hostname"]

    @property
    def dps_hostname(self):
        """The DPS endpoint's name (data folders made before the DPS existed have none: Azure's default)."""
        return self.state().get("dps_hostname") or DEFAULT_DPS_HOSTNAME

    def server_names(self):
        """The names the server certificate is for: hub, DPS, localhost and 127.0.0.1."""
        return [self.hostname, self.dps_hostname, "localhost", "127.0.0.1"]

    @property
    def active(self):
        return self.state()["active"]

    def generations(self):
        return sorted(int(p.stem[3:]) for p in self.dir.glob("ca-*.pem"))

    def ca_path(self, gen=None):
        return self.dir / ("ca-%d.pem" % (self.active if gen is None else gen))

    def server_paths(self, gen=None):
        gen = self.active if gen is None else gen
        return self.dir / ("server-%d.pem" % gen), self.dir / ("server-%d.key" % gen)

    def pending(self):
        """The newest generation when it is newer than the active one (created by rotate-ca, not yet active)."""
        gens = self.generations()
        return gens[-1] if gens and gens[-1] > self.active else None

    def init(self, hostname=DEFAULT_HOSTNAME, force=False, dps_hostname=DEFAULT_DPS_HOSTNAME):
        """Create CA 1 and its server certificate; never overwrites keys without force."""
        if self.exists() and not force:
            raise HubError("the hub PKI already exists in %s (use --force to replace it)" % self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if force:
            for p in self.dir.glob("*-*.*"):
                p.unlink()
        self._save({"active": 1, "hostname": hostname, "dps_hostname": dps_hostname})
        self._new_generation(1)
        return self.ca_path(1)

    def _new_generation(self, gen):
        ca, ca_key = make_ca("upyhub local hub root CA %d" % gen)
        write_atomic(self.dir / ("ca-%d.key" % gen), _key_pem(ca_key), private=True)
        write_atomic(self.dir / ("ca-%d.pem" % gen), cert_pem(ca))
        self._issue_server(gen, ca, ca_key)

    def _issue_server(self, gen, ca, ca_key):
        leaf, leaf_key = issue(ca, ca_key, self.hostname, server_names=self.server_names())
        write_atomic(self.dir / ("server-%d.key" % gen), _key_pem(leaf_key), private=True)
        write_atomic(self.dir / ("server-%d.pem" % gen), cert_pem(leaf) + cert_pem(ca))

    def ensure_server_names(self):
        """Reissue (from the same CA) the active and pending server certificates that lack a name of
        server_names(): data folders made before the DPS existed have no DPS hostname in theirs.
        The CAs stay, so devices that pin them are unaffected. Returns the generations reissued."""
        st = self.state()
        if "dps_hostname" not in st:
            self._save(dict(st, dps_hostname=DEFAULT_DPS_HOSTNAME))
        want = {n.lower() for n in self.server_names()}
        done = []
        for gen in {self.active, self.pending() or self.active}:
            leaf = x509.load_pem_x509_certificate(self.server_paths(gen)[0].read_bytes())
            try:
                sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                have = {n.lower() for n in sans.get_values_for_type(x509.DNSName)}
                have |= {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
            except x509.ExtensionNotFound:
                have = set()
            if not want <= have:
                self._issue_server(gen, *self.ca(gen))
                done.append(gen)
        return done

    def rotate(self):
        """Create the next CA generation and its server certificate, without activating it."""
        self.state()
        if self.pending():
            raise HubError("CA %d is already waiting: activate it with `upyhub hub rotate-ca --activate`"
                             % self.pending())
        gen = self.generations()[-1] + 1
        self._new_generation(gen)
        return gen

    def activate(self):
        """Switch the server to the pending CA generation (a running hub picks it up for new connections)."""
        st = self.state()
        gen = self.pending()
        if gen is None:
            raise HubError("no new CA to activate: run `upyhub hub rotate-ca` first")
        st["active"] = gen
        self._save(st)
        return gen

    def ca(self, gen=None):
        """(certificate, key) of a CA generation (the active one by default)."""
        gen = self.active if gen is None else gen
        cert = x509.load_pem_x509_certificate(self.ca_path(gen).read_bytes())
        key = serialization.load_pem_private_key((self.dir / ("ca-%d.key" % gen)).read_bytes(), None)
        return cert, key

    def all_cas(self):
        return [x509.load_pem_x509_certificate(self.ca_path(g).read_bytes()) for g in self.generations()]

    def issue_device_cert(self, device_id, out_dir):
        """A client certificate for device_id from the active CA (certificateAuthority auth)."""
        cert, key = issue(*self.ca(), device_id, client=True)
        return self.write_pair(cert, key, out_dir, device_id)

    def register_ca(self, cert):
        """Register a device CA: certificateAuthority devices whose chain ends at it may connect."""
        if not is_ca(cert):
            raise UsageError("not a CA certificate (basicConstraints CA:TRUE)")
        self.cas_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.cas_dir / (thumbprints(der(cert))[1].lower() + ".pem"), cert_pem(cert))

    def issuers(self):
        """Every CA a certificateAuthority device may chain to: the hub's generations and the registered CAs."""
        cas = self.all_cas()
        for p in sorted(self.cas_dir.glob("*.pem")):
            try:
                c = x509.load_pem_x509_certificate(p.read_bytes())
            except ValueError:
                continue
            if is_ca(c):
                cas.append(c)
        return cas

    @staticmethod
    def write_pair(cert, key, out_dir, name):
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        crt, kp = out / (name + ".crt"), out / (name + ".key")
        write_atomic(kp, _key_pem(key), private=True)
        write_atomic(crt, cert_pem(cert))
        return crt, kp
