"""asyncssh against blink-server: see README.md."""

import asyncio
import hashlib
import os
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import args, expect, fingerprint, ok  # noqa: E402

import asyncssh  # noqa: E402

port, login, good, wrong, want_fingerprint = args()


async def main():
    started = time.monotonic()
    # Both keys on one connection: the wrong one is refused, the right one
    # lets it in. No agent, no ~/.ssh/config, no known_hosts: the host key
    # is checked against the fingerprint the server printed.
    conn = await asyncssh.connect(
        "127.0.0.1",
        port,
        username=login,
        client_keys=[asyncssh.read_private_key(wrong), asyncssh.read_private_key(good)],
        known_hosts=None,
        agent_path=None,
        config=[],
        connect_timeout=20,
        login_timeout=20,
        keepalive_interval=1,
        keepalive_count_max=3,
    )
    took = time.monotonic() - started
    if took > 10:
        raise AssertionError(f"login took {took:.1f} s")
    host_key = conn.get_server_host_key()
    expect(fingerprint(host_key.public_data), want_fingerprint, "host key")
    ok("login with a wrong key then the right one")

    async with conn:
        r = await conn.run("echo out; echo err >&2; exit 3", check=False)
        expect((r.exit_status, r.stdout, r.stderr), (3, "out\n", "err\n"), "exec")
        ok("exec: exit status, stdout and stderr apart")

        data = os.urandom(300_000)
        r = await conn.run("cat", input=data, encoding=None, check=False)
        expect((r.exit_status, r.stdout == data), (0, True), "stdin through cat")
        ok("exec: stdin and its EOF")

        r = await conn.run("kill -TERM $$", check=False)
        expect(r.exit_signal[0] if r.exit_signal else None, "TERM", "exit signal")
        ok("exec: exit signal")

        r = await conn.run(
            "tty; echo $TERM; stty size", term_type="xterm", term_size=(100, 40), check=False
        )
        if r.exit_status != 0 or "/dev/pts/" not in r.stdout or "40 100" not in r.stdout:
            raise AssertionError(f"pty: {r!r}")
        ok("exec with a PTY")

        async with conn.start_sftp_client() as sftp:
            await sftp_checks(conn, sftp)

        # The server sends a keepalive every second and drops a client that
        # leaves two unanswered (the test's config); asyncssh sends its own
        # every second and drops a server that leaves three unanswered.
        r = await conn.run("sleep 4; echo awake", check=False)
        expect((r.exit_status, r.stdout), (0, "awake\n"), "quiet channel across keepalives")
        ok("keepalives both ways on a quiet channel")


async def sftp_checks(conn, sftp):
    await conn.run("rm -rf /root/adir", check=True)
    expect(await sftp.realpath("."), "/root", "realpath")
    expect(await sftp.getcwd(), "/root", "getcwd")
    await sftp.mkdir("adir", asyncssh.SFTPAttrs(permissions=0o750))
    expect(stat.S_IMODE((await sftp.stat("adir")).permissions), 0o750, "mkdir mode")
    await sftp.makedirs("adir/deep/er")
    expect(await sftp.isdir("adir/deep/er"), True, "makedirs")
    async with sftp.open("adir/f", "wb") as f:
        await f.write(b"hello world")
    async with sftp.open("adir/f", "r+b") as f:
        await f.write(b"WORLD", 6)
        expect(await f.read(5, 6), b"WORLD", "read at an offset")
        expect((await f.stat()).size, 11, "fstat size")
        await f.fsync()
        await f.truncate(5)
        await f.chmod(0o640)
        expect((await f.statvfs()).bsize > 0, True, "fstatvfs")
    expect((await sftp.stat("adir/f")).size, 5, "ftruncate")
    expect(stat.S_IMODE((await sftp.stat("adir/f")).permissions), 0o640, "fchmod")
    ok("sftp: open, write and read at offsets, fstat, fsync, ftruncate, fchmod, fstatvfs")

    await sftp.chmod("adir/f", 0o600)
    expect(stat.S_IMODE((await sftp.stat("adir/f")).permissions), 0o600, "chmod")
    await sftp.chown("adir/f", 0, 0)
    attrs = await sftp.stat("adir/f")
    expect((attrs.uid, attrs.gid), (0, 0), "chown")
    await sftp.utime("adir/f", (1_000_000_000, 1_000_000_000))
    expect((await sftp.stat("adir/f")).mtime, 1_000_000_000, "utime")
    await sftp.truncate("adir/f", 2)
    expect(await sftp.getsize("adir/f"), 2, "truncate")
    expect((await sftp.statvfs(".")).blocks > 0, True, "statvfs")
    ok("sftp: setstat (chmod, chown, utime, truncate) and statvfs")

    local = os.path.join(os.path.dirname(good), "asyncssh-up")
    payload = os.urandom(3 << 20)
    with open(local, "wb") as f:
        f.write(payload)
    await sftp.put(local, "adir/big")
    await sftp.get("adir/big", local + ".back")
    expect(open(local + ".back", "rb").read() == payload, True, "get")
    r = await conn.run("sha256sum < /root/adir/big", check=False)
    expect(r.stdout.split()[0], hashlib.sha256(payload).hexdigest(), "sum in the sandbox")
    ok("sftp: put and get 3 MiB byte-exact")

    expect(sorted(await sftp.listdir("adir")), [".", "..", "big", "deep", "f"], "listdir")
    names = {n.filename: n for n in await sftp.readdir("adir")}
    if not names["big"].longname.startswith("-rw"):
        raise AssertionError(f"longname: {names['big'].longname!r}")
    expect(sorted(await sftp.glob("adir/*")), ["adir/big", "adir/deep", "adir/f"], "glob")
    ok("sftp: listdir, readdir with long names, glob")

    await sftp.rename("adir/f", "adir/g")
    try:
        await sftp.rename("adir/g", "adir/big")
        raise AssertionError("rename replaced an existing file")
    except asyncssh.SFTPError:
        pass
    await sftp.posix_rename("adir/g", "adir/small")
    await sftp.link("adir/small", "adir/hard")
    r = await conn.run("stat -c %h /root/adir/hard", check=False)
    expect(r.stdout, "2\n", "hard link count in the sandbox")
    ok("sftp: rename (no replace), posix-rename, hard link")

    # SYMLINK: asyncssh sends the draft's order to a server that does not
    # say OpenSSH; the gateway reads it that way for asyncssh.
    await sftp.symlink("big", "adir/link")
    expect(await sftp.readlink("adir/link"), "big", "readlink over sftp")
    expect(await sftp.islink("adir/link"), True, "lstat of a link")
    expect((await sftp.stat("adir/link")).size, 3 << 20, "stat follows the link")
    r = await conn.run("readlink /root/adir/link", check=False)
    expect(r.stdout, "big\n", "readlink in the sandbox of a link made over sftp")
    await conn.run("ln -s /etc/hostname /root/adir/made-in-shell", check=True)
    expect(await sftp.readlink("adir/made-in-shell"), "/etc/hostname", "readlink over sftp")
    ok("sftp: symlink and readlink, both ways")

    await sftp.chdir("adir")
    expect(await sftp.getcwd(), "/root/adir", "chdir")
    await sftp.remove("link")
    await sftp.chdir("/root")
    await sftp.rmdir("adir/deep/er")
    await sftp.rmtree("adir")
    expect(await sftp.exists("adir"), False, "rmtree")
    ok("sftp: remove, rmdir, rmtree")


asyncio.run(main())
