# Just enough X.509 to judge a root certificate pushed over the air, on the chip:
# split PEM bundles, walk the DER, read subject CN, validity, basicConstraints, keyUsage,
# and the SHA-256 fingerprint. No signature checks: the set arrives over the hub's
# authenticated TLS session, and mbedtls parses it again when it is loaded.
import binascii
import hashlib

from iothub.crypto import b64decode

_BEGIN = b"-----BEGIN "
_END = b"-----END "
_DASH = b"-----"
# DER OIDs (contents only).
_OID_CN = b"\x55\x04\x03"
_OID_O = b"\x55\x04\x0a"
_OID_OU = b"\x55\x04\x0b"
_OID_BASIC = b"\x55\x1d\x13"
_OID_KEYUSAGE = b"\x55\x1d\x0f"


def _bad(why):
    return ValueError("not an X.509 certificate: " + why)


def _tlv(buf, pos, end, tag=None):
    # One DER element at pos: (tag, start of value, end of value). Bounds-checked.
    if pos + 2 > end:
        raise _bad("truncated")
    t = buf[pos]
    if tag is not None and t != tag:
        raise _bad("unexpected tag 0x%02x (wanted 0x%02x)" % (t, tag))
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or pos + k > end:
            raise _bad("bad length")
        n = 0
        for i in range(k):
            n = (n << 8) | buf[pos + i]
        pos += k
    if pos + n > end:
        raise _bad("truncated")
    return t, pos, pos + n


def days_from_civil(y, m, d):
    # Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def iso(t):
    # Unix seconds -> "YYYY-MM-DDTHH:MM:SSZ" (the cert store's, which reports it).
    from iothub.certstore import iso

    return iso(t)


def _time(buf, tag, a, b):
    # UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ -> Unix seconds.
    s = bytes(buf[a:b])
    if s[-1:] != b"Z":
        raise _bad("time is not UTC")
    for c in s[:-1]:
        if not 0x30 <= c <= 0x39:
            raise _bad("bad time digits")
    if tag == 0x17:
        if len(s) != 13:
            raise _bad("bad UTCTime")
        y = int(s[0:2])
        y += 1900 if y >= 50 else 2000  # RFC 5280 4.1.2.5.1
        s = s[2:]
    elif tag == 0x18:
        if len(s) != 15:
            raise _bad("bad GeneralizedTime")
        y = int(s[0:4])
        s = s[4:]
    else:
        raise _bad("bad time tag")
    mo, d, hh, mm, ss = int(s[0:2]), int(s[2:4]), int(s[4:6]), int(s[6:8]), int(s[8:10])
    if not (1 <= mo <= 12 and 1 <= d <= 31 and hh < 24 and mm < 60 and ss < 60):
        raise _bad("bad time value")
    return days_from_civil(y, mo, d) * 86400 + hh * 3600 + mm * 60 + ss


def _name(buf, a, b):
    # Name = SEQUENCE OF SET OF SEQUENCE {OID, value}: prefer CN, then OU, then O.
    found = {}
    pos = a
    while pos < b:
        _, sa, sb = _tlv(buf, pos, b, 0x31)
        p = sa
        while p < sb:
            _, qa, qb = _tlv(buf, p, sb, 0x30)
            _, oa, ob = _tlv(buf, qa, qb, 0x06)
            _, va, vb = _tlv(buf, ob, qb)
            oid = bytes(buf[oa:ob])
            if oid in (_OID_CN, _OID_OU, _OID_O) and oid not in found:
                try:
                    found[oid] = bytes(buf[va:vb]).decode()
                except Exception:
                    found[oid] = "?"
            p = qb
        pos = sb
    for oid in (_OID_CN, _OID_OU, _OID_O):
        if oid in found:
            return found[oid]
    return ""


class Cert:
    # der: the certificate; cn: subject CN (or OU/O); not_before/not_after: Unix seconds;
    # is_ca: basicConstraints cA; can_sign: keyUsage allows keyCertSign (or no keyUsage);
    # self_issued: issuer == subject (a root, not an intermediate); sha256: hex fingerprint.
    def __init__(self, der):
        self.der = der
        self.cn = ""
        self.not_before = 0
        self.not_after = 0
        self.is_ca = False
        self.can_sign = True
        self.self_issued = False
        self.sha256 = binascii.hexlify(hashlib.sha256(der).digest()).decode()

    def info(self):
        return {"cn": self.cn, "sha256": self.sha256, "notAfter": iso(self.not_after)}


def _extensions(cert, buf, a, b):
    _, a, b = _tlv(buf, a, b, 0x30)
    pos = a
    while pos < b:
        _, ea, eb = _tlv(buf, pos, b, 0x30)
        _, oa, ob = _tlv(buf, ea, eb, 0x06)
        p = ob
        t, va, vb = _tlv(buf, p, eb)
        if t == 0x01:  # critical flag
            t, va, vb = _tlv(buf, vb, eb)
        if t != 0x04:
            raise _bad("bad extension")
        oid = bytes(buf[oa:ob])
        if oid == _OID_BASIC:
            _, sa, sb = _tlv(buf, va, vb, 0x30)
            if sa < sb and buf[sa] == 0x01:
                _, ba, bb = _tlv(buf, sa, sb, 0x01)
                cert.is_ca = bb == ba + 1 and buf[ba] != 0
        elif oid == _OID_KEYUSAGE:
            _, ka, kb = _tlv(buf, va, vb, 0x03)
            # BIT STRING: unused-bits byte, then bits; keyCertSign is bit 5 (0x04 of byte 0).
            cert.can_sign = kb - ka >= 2 and bool(buf[ka + 1] & 0x04)
        pos = eb


def parse(der):
    # DER bytes -> Cert; ValueError("not an X.509 certificate: ...") on anything malformed.
    der = bytes(der)
    buf = memoryview(der)
    n = len(der)
    try:
        _, ca, cb = _tlv(buf, 0, n, 0x30)
        if cb != n:
            raise _bad("trailing bytes")
        _, ta, tb = _tlv(buf, ca, cb, 0x30)  # tbsCertificate
        cert = Cert(der)
        pos = ta
        t, a, b = _tlv(buf, pos, tb)
        if t == 0xA0:  # [0] version
            pos = b
        _, a, pos = _tlv(buf, pos, tb, 0x02)  # serialNumber
        _, a, pos = _tlv(buf, pos, tb, 0x30)  # signature algorithm
        _, ia, ib = _tlv(buf, pos, tb, 0x30)  # issuer
        _, va, pos = _tlv(buf, ib, tb, 0x30)  # validity
        t, a, b = _tlv(buf, va, pos)
        cert.not_before = _time(buf, t, a, b)
        t, a, b = _tlv(buf, b, pos)
        cert.not_after = _time(buf, t, a, b)
        _, sa, sb = _tlv(buf, pos, tb, 0x30)  # subject
        cert.cn = _name(buf, sa, sb)
        cert.self_issued = bytes(buf[ia:ib]) == bytes(buf[sa:sb])
        _, a, pos = _tlv(buf, sb, tb, 0x30)  # subjectPublicKeyInfo
        while pos < tb:
            t, a, b = _tlv(buf, pos, tb)
            if t == 0xA3:
                _extensions(cert, buf, a, b)
            pos = b
        return cert
    except ValueError:
        raise
    except Exception:  # IndexError and friends from a hostile input
        raise _bad("malformed DER")


def is_pem(data):
    # DER starts with SEQUENCE (0x30); PEM bundles may start with comments (certifi's do).
    return len(data) > 0 and data[0] != 0x30


def pem_blocks(data):
    # PEM text -> list of DER bytes, one per CERTIFICATE block. Any other block
    # (a private key pasted by mistake) is refused rather than silently skipped.
    data = bytes(data)
    out = []
    pos = 0
    while True:
        i = data.find(_BEGIN, pos)
        if i < 0:
            break
        j = data.find(_DASH, i + len(_BEGIN))
        if j < 0:
            raise ValueError("PEM: unterminated BEGIN line")
        label = data[i + len(_BEGIN):j]
        if label != b"CERTIFICATE":
            raise ValueError("PEM: only CERTIFICATE blocks are allowed, found " + label.decode("ascii", "replace")[:40])
        end_line = _END + label + _DASH
        k = data.find(end_line, j)
        if k < 0:
            raise ValueError("PEM: CERTIFICATE block has no END line")
        body = data[j + len(_DASH):k].replace(b"\r", b"").replace(b"\n", b"").replace(b" ", b"").replace(b"\t", b"")
        out.append(b64decode(body, "PEM body"))
        pos = k + len(end_line)
    if not out:
        raise ValueError("PEM: no CERTIFICATE block")
    return out


def load(data):
    # PEM bundle or one DER certificate -> list of Cert.
    if is_pem(data):
        return [parse(d) for d in pem_blocks(data)]
    return [parse(data)]
