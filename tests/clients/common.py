"""What both client scripts share: arguments, checks and the host key."""

import base64
import hashlib
import sys


def args():
    """PORT LOGIN GOOD_KEY WRONG_KEY FINGERPRINT."""
    if len(sys.argv) != 6:
        sys.exit(f"usage: {sys.argv[0]} PORT LOGIN GOOD_KEY WRONG_KEY FINGERPRINT")
    port, login, good, wrong, fingerprint = sys.argv[1:]
    return int(port), login, good, wrong, fingerprint


def fingerprint(blob):
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def ok(name):
    print(f"ok: {name}", flush=True)


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")
