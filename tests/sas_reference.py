"""An independent SAS token implementation on CPython, as the Azure SDKs do it, for tests to compare against."""
import base64
import hashlib
import hmac
import urllib.parse


def reference_token(uri, key_b64, expiry, policy=None):
    sr = urllib.parse.quote(uri, safe="")
    sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), ("%s\n%d" % (sr, expiry)).encode(),
                                    hashlib.sha256).digest()).decode()
    tok = "SharedAccessSignature sr=%s&sig=%s&se=%d" % (sr, urllib.parse.quote(sig, safe=""), expiry)
    return tok + ("&skn=" + urllib.parse.quote(policy, safe="") if policy else "")
