"""paramiko against blink-server: see README.md."""

import os
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import args, expect, fingerprint, ok  # noqa: E402

import paramiko  # noqa: E402

port, login, good, wrong, want_fingerprint = args()


class CheckFingerprint(paramiko.MissingHostKeyPolicy):
    """Accept the host key only if it is the one the server printed."""

    def missing_host_key(self, client, hostname, key):
        expect(fingerprint(key.asbytes()), want_fingerprint, "host key")


client = paramiko.SSHClient()
client.set_missing_host_key_policy(CheckFingerprint())
started = time.monotonic()
# paramiko tries each key in turn on one connection: the wrong one is
# refused, the right one lets it in.
client.connect(
    "127.0.0.1",
    port=port,
    username=login,
    key_filename=[wrong, good],
    look_for_keys=False,
    allow_agent=False,
    timeout=20,
    banner_timeout=20,
    auth_timeout=20,
)
took = time.monotonic() - started
if took > 10:
    raise AssertionError(f"login took {took:.1f} s")
ok("login with a wrong key then the right one")
transport = client.get_transport()


def run(command, stdin=b"", pty=False):
    chan = transport.open_session(timeout=20)
    chan.settimeout(30)
    if pty:
        chan.get_pty(term="xterm", width=100, height=40)
    chan.exec_command(command)
    if stdin:
        chan.sendall(stdin)
    chan.shutdown_write()
    out = chan.makefile("rb").read()
    err = chan.makefile_stderr("rb").read()
    return chan.recv_exit_status(), out, err


status, out, err = run("echo out; echo err >&2; exit 3")
expect((status, out, err), (3, b"out\n", b"err\n"), "exec")
ok("exec: exit status, stdout and stderr apart")

data = os.urandom(300_000)
status, out, _ = run("cat", data)
expect((status, out == data), (0, True), "stdin through cat")
ok("exec: stdin and its EOF")

status, out, _ = run("tty; echo $TERM; stty size", pty=True)
text = out.decode()
expect(status, 0, "pty status")
if "/dev/pts/" not in text or "xterm" not in text or "40 100" not in text:
    raise AssertionError(f"pty: {text!r}")
ok("exec with a PTY")

chan = transport.open_session(timeout=20)
chan.settimeout(30)
chan.get_pty(term="xterm")
chan.invoke_shell()
chan.sendall(b"echo from-the-shell; exit 7\n")
expect(chan.recv_exit_status(), 7, "shell exit status")
ok("shell with a PTY")

run("rm -rf /root/pdir")
sftp = client.open_sftp()
sftp.get_channel().settimeout(30)
expect(sftp.normalize("."), "/root", "realpath")
sftp.mkdir("pdir", 0o750)
expect(stat.S_IMODE(sftp.stat("pdir").st_mode), 0o750, "mkdir mode")
with sftp.open("pdir/f", "wb") as f:
    f.write(b"hello world")
with sftp.open("pdir/f", "r+b") as f:
    f.seek(6)
    f.write(b"WORLD")
    expect(f.stat().st_size, 11, "fstat size")
with sftp.open("pdir/f", "rb") as f:
    f.seek(6)
    expect(f.read(5), b"WORLD", "read at an offset")
with sftp.open("pdir/f", "ab") as f:
    f.write(b"!")
expect(sftp.stat("pdir/f").st_size, 12, "append")
ok("sftp: open, write and read at offsets, append, fstat")

sftp.chmod("pdir/f", 0o600)
expect(stat.S_IMODE(sftp.stat("pdir/f").st_mode), 0o600, "chmod")
sftp.chown("pdir/f", 0, 0)
expect((sftp.stat("pdir/f").st_uid, sftp.stat("pdir/f").st_gid), (0, 0), "chown")
sftp.utime("pdir/f", (1_000_000_000, 1_000_000_000))
expect(sftp.stat("pdir/f").st_mtime, 1_000_000_000, "utime")
sftp.truncate("pdir/f", 5)
expect(sftp.stat("pdir/f").st_size, 5, "truncate")
with sftp.open("pdir/f", "r+b") as f:
    f.truncate(3)
    f.chmod(0o640)
expect(sftp.stat("pdir/f").st_size, 3, "ftruncate")
expect(stat.S_IMODE(sftp.stat("pdir/f").st_mode), 0o640, "fchmod")
ok("sftp: setstat and fsetstat (chmod, chown, utime, truncate)")

local = os.path.join(os.path.dirname(good), "paramiko-up")
with open(local, "wb") as f:
    f.write(os.urandom(3 << 20))
sftp.put(local, "pdir/big")
sftp.get("pdir/big", local + ".back")
expect(open(local + ".back", "rb").read() == open(local, "rb").read(), True, "get")
status, out, _ = run("sha256sum < /root/pdir/big")
import hashlib  # noqa: E402

expect(out.split()[0].decode(), hashlib.sha256(open(local, "rb").read()).hexdigest(), "sum")
ok("sftp: put and get 3 MiB byte-exact")

expect(sorted(sftp.listdir("pdir")), ["big", "f"], "listdir")
attrs = {a.filename: a for a in sftp.listdir_attr("pdir")}
expect(attrs["big"].st_size, 3 << 20, "listdir_attr size")
if not attrs["big"].longname.startswith("-rw"):
    raise AssertionError(f"longname: {attrs['big'].longname!r}")
ok("sftp: listdir and long names")

sftp.rename("pdir/f", "pdir/g")
try:
    sftp.rename("pdir/g", "pdir/big")
    raise AssertionError("rename replaced an existing file")
except IOError:
    pass
sftp.posix_rename("pdir/g", "pdir/small")
expect(sorted(sftp.listdir("pdir")), ["big", "small"], "after renames")
ok("sftp: rename (no replace) and posix-rename")

# SYMLINK: paramiko sends the target first (OpenSSH's order).
sftp.symlink("big", "pdir/link")
expect(sftp.readlink("pdir/link"), "big", "readlink over sftp")
expect(stat.S_ISLNK(sftp.lstat("pdir/link").st_mode), True, "lstat of a link")
expect(sftp.stat("pdir/link").st_size, 3 << 20, "stat follows the link")
status, out, _ = run("readlink /root/pdir/link")
expect(out, b"big\n", "readlink in the sandbox of a link made over sftp")
run("ln -s /etc/hostname /root/pdir/made-in-shell")
expect(sftp.readlink("pdir/made-in-shell"), "/etc/hostname", "readlink over sftp")
ok("sftp: symlink and readlink, both ways")

sftp.chdir("pdir")
expect(sftp.getcwd(), "/root/pdir", "chdir")
sftp.chdir("/root")
for name in ["link", "made-in-shell", "big", "small"]:
    sftp.remove(f"pdir/{name}")
sftp.rmdir("pdir")
try:
    sftp.stat("pdir")
    raise AssertionError("pdir still there")
except FileNotFoundError:
    pass
ok("sftp: remove and rmdir")
sftp.close()

# The server sends a keepalive every second and drops a client that leaves
# two unanswered (the test's config); paramiko sends its own too.
transport.set_keepalive(1)
status, out, _ = run("sleep 4; echo awake")
expect((status, out), (0, b"awake\n"), "quiet channel across keepalives")
ok("keepalives both ways on a quiet channel")
client.close()
