# Percent-encoding as the Azure SDKs do it: urllib.parse.quote(s, safe=""), only A-Z a-z 0-9 _ . - ~
# stay. Its own module so topics (always loaded) does not pull in sas (loaded only to mint a token).
_HEX = b"0123456789ABCDEF"


def quote(s):
    if isinstance(s, str):
        s = s.encode()
    out = bytearray()
    for c in s:
        # unreserved: A-Z a-z 0-9 _ . - ~
        if 97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c in (95, 46, 45, 126):
            out.append(c)
        else:
            out.append(37)
            out.append(_HEX[c >> 4])
            out.append(_HEX[c & 15])
    return out.decode()
