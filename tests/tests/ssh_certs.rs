//! OpenSSH user certificates end to end: certificates made by the real
//! `ssh-keygen -s` in the test, presented by the real `ssh`
//! (`-o CertificateFile=...`) to a blink-server whose `[ssh]
//! trusted_user_ca_keys` names the test's CA. No key is ever registered
//! for the session. Every connection goes to 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use blink_e2e::ssh::Client;
use blink_e2e::{Blink, Server, run, texts};

/// A session `s1` with no key, a client with keys `id` and `other`, CAs
/// `ca` and `ca2`, and the files the server will be pointed at.
struct Certs {
    blink: Blink,
    client: Client,
    trusted: PathBuf,
    revoked: PathBuf,
}

impl Certs {
    fn new() -> Option<Self> {
        let blink = Blink::with_runtime()?;
        blink.ok(&["session", "open", "--name", "s1"]);
        let client = Client::new();
        client.keygen("ca");
        client.keygen("ca2");
        let trusted = client.path("trusted_cas");
        std::fs::write(&trusted, client.public_key("ca") + "\n").unwrap();
        let revoked = client.path("revoked");
        std::fs::write(&revoked, "# nothing revoked yet\n").unwrap();
        Some(Self {
            blink,
            client,
            trusted,
            revoked,
        })
    }

    fn server(&self, extra: &str) -> Server {
        let config = format!(
            "[ssh]\ntrusted_user_ca_keys = {:?}\nrevoked_keys = {:?}\nwildcard_principal = \"*\"\n{extra}",
            self.trusted.display().to_string(),
            self.revoked.display().to_string(),
        );
        self.blink
            .server()
            .config(&config)
            .log_filter("warn,blink_server=info,blink=info")
            .start()
    }

    /// Sign the client's `key`.pub with `ca` and `ssh-keygen -s` arguments;
    /// the certificate's path (never `<key>-cert.pub`, which `ssh -i`
    /// would pick up by itself).
    fn sign(&self, ca: &str, key: &str, name: &str, args: &[&str]) -> PathBuf {
        let pubkey = self.client.path(&format!("{name}.pub"));
        std::fs::copy(self.client.path(&format!("{key}.pub")), &pubkey).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-q")
            .arg("-s")
            .arg(self.client.path(ca))
            .args(args)
            .arg(&pubkey)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "{}", texts(&out).1);
        self.client.path(&format!("{name}-cert.pub"))
    }

    /// `ssh` as `login` with the `id` key and this certificate.
    fn ssh(&self, server: &Server, cert: &Path, login: &str, args: &[&str]) -> Output {
        let mut cmd = self.client.ssh(server, "id", login);
        cmd.arg("-o")
            .arg(format!("CertificateFile={}", cert.display()))
            .args(args);
        run(&mut cmd, b"")
    }

    /// What a client with a key nobody knows is told: the refusal every
    /// refused certificate must look like.
    fn plain_refusal(&self, server: &Server) -> String {
        let out = run(self.client.ssh(server, "other", "s1").arg("true"), b"");
        assert_eq!(out.status.code(), Some(255));
        texts(&out).1
    }
}

/// Refused, and told exactly what any other refused client is told.
fn assert_refused_like(out: &Output, plain: &str, what: &str) {
    let (stdout, stderr) = texts(out);
    assert_eq!(out.status.code(), Some(255), "{what}: {stdout} {stderr}");
    assert!(
        stderr.contains("Permission denied (publickey)"),
        "{what}: {stderr}"
    );
    assert_eq!(
        stderr, plain,
        "{what}: the refusal differs from a wrong key's"
    );
}

#[test]
fn certificates_log_in_and_every_refusal_looks_the_same() {
    let Some(c) = Certs::new() else { return };
    c.blink.ok(&["session", "open", "--name", "s2"]);
    let server = c.server("");
    let plain = c.plain_refusal(&server);

    // The control plane's certificate: five minutes, one session.
    let valid = c.sign(
        "ca",
        "id",
        "valid",
        &["-I", "agent-7", "-n", "s1", "-V", "+5m"],
    );
    let out = c.ssh(&server, &valid, "s1", &["echo in"]);
    assert_eq!(texts(&out).0, "in\n", "{}", texts(&out).1);
    let line = server
        .wait_log(&["ssh login", "via=\"certificate\"", "agent-7"])
        .expect("the login is logged with the certificate's id");
    assert!(
        line.contains("serial=0") && line.contains("ca=\"SHA256:"),
        "{line}"
    );
    // The same key without the certificate is nobody.
    let out = run(c.client.ssh(&server, "id", "s1").arg("true"), b"");
    assert_refused_like(&out, &plain, "the bare key");

    let cases: [(&str, &str, &[&str], &str); 6] = [
        (
            "expired",
            "ca",
            &["-I", "x-expired", "-n", "s1", "-V", "-20m:-10m"],
            "expired",
        ),
        (
            "future",
            "ca",
            &["-I", "x-future", "-n", "s1", "-V", "+10m:+20m"],
            "not valid yet",
        ),
        (
            "elsewhere",
            "ca",
            &["-I", "x-elsewhere", "-n", "s2,s10", "-V", "+5m"],
            "do not name the session",
        ),
        (
            "foreign",
            "ca2",
            &["-I", "x-foreign", "-n", "s1", "-V", "+5m"],
            "not a trusted CA",
        ),
        (
            "far",
            "ca",
            &["-I", "x-far", "-n", "s1", "-O", "source-address=10.0.0.0/8"],
            "does not match",
        ),
        (
            "odd",
            "ca",
            &[
                "-I",
                "x-odd",
                "-n",
                "s1",
                "-O",
                "critical:frob@example.com=1",
            ],
            "frob@example.com",
        ),
    ];
    for (name, ca, args, why) in cases {
        let cert = c.sign(ca, "id", name, args);
        let out = c.ssh(&server, &cert, "s1", &["echo in"]);
        assert_refused_like(&out, &plain, name);
        let line = server
            .wait_log(&["ssh certificate refused", &format!("x-{name}")])
            .unwrap_or_else(|| panic!("{name}: no refusal logged"));
        assert!(line.contains(why), "{name}: {line}");
    }

    // Within the clock skew (60 s by default) both ends are taken: just
    // expired, and not quite valid yet.
    for (name, window) in [("just-expired", "-10m:-20s"), ("almost", "+20s:+5m")] {
        let cert = c.sign("ca", "id", name, &["-I", name, "-n", "s1", "-V", window]);
        let out = c.ssh(&server, &cert, "s1", &["echo in"]);
        assert_eq!(texts(&out).0, "in\n", "{name}: {}", texts(&out).1);
    }

    // The wildcard principal reaches any session.
    let wild = c.sign("ca", "id", "wild", &["-I", "ops", "-n", "*", "-V", "+5m"]);
    for session in ["s1", "s2"] {
        let out = c.ssh(&server, &wild, session, &["echo in"]);
        assert_eq!(texts(&out).0, "in\n", "{session}: {}", texts(&out).1);
    }
    // An ordinary certificate does not reach s2.
    let out = c.ssh(&server, &valid, "s2", &["true"]);
    assert_refused_like(&out, &plain.replace("s1@", "s2@"), "s1's certificate at s2");
}

#[test]
fn revocation_and_trusted_cas_change_without_a_restart() {
    let Some(c) = Certs::new() else { return };
    let server = c.server("");
    let plain = c.plain_refusal(&server);
    let seven = c.sign(
        "ca",
        "id",
        "seven",
        &["-I", "agent-a", "-n", "s1", "-z", "7"],
    );
    let eight = c.sign(
        "ca",
        "id",
        "eight",
        &["-I", "agent-b", "-n", "s1", "-z", "8"],
    );
    let logs_in = |cert: &Path| texts(&c.ssh(&server, cert, "s1", &["echo in"])).0 == "in\n";
    assert!(logs_in(&seven) && logs_in(&eight));

    // A text list: serial 7 revoked.
    std::fs::write(&c.revoked, "serial: 7\n").unwrap();
    assert_refused_like(&c.ssh(&server, &seven, "s1", &["true"]), &plain, "serial 7");
    assert!(logs_in(&eight));
    assert!(server.wait_log(&["revoked", "agent-a"]).is_some());

    // A KRL from ssh-keygen -k, written over it: key id agent-b revoked,
    // serial 7 no longer.
    let spec = c.client.path("spec");
    std::fs::write(&spec, "id: agent-b\n").unwrap();
    let krl = c.client.path("krl");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-k", "-f"])
        .arg(&krl)
        .arg("-s")
        .arg(c.client.path("ca.pub"))
        .arg(&spec)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", texts(&out).1);
    std::fs::copy(&krl, &c.revoked).unwrap();
    assert_refused_like(
        &c.ssh(&server, &eight, "s1", &["true"]),
        &plain,
        "id agent-b",
    );
    assert!(logs_in(&seven));

    // The key itself, revoked by the KRL: every certificate of it goes.
    let out = Command::new("ssh-keygen")
        .args(["-q", "-k", "-u", "-f"])
        .arg(&c.revoked)
        .arg(c.client.path("id.pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", texts(&out).1);
    assert_refused_like(
        &c.ssh(&server, &seven, "s1", &["true"]),
        &plain,
        "revoked key",
    );

    // A broken list refuses everyone (as sshd), until it is fixed.
    std::fs::write(&c.revoked, "serial: banana\n").unwrap();
    let other = c.sign(
        "ca",
        "other",
        "other-signed",
        &["-I", "agent-c", "-n", "s1"],
    );
    let mut cmd = c.client.ssh(&server, "other", "s1");
    cmd.arg("-o")
        .arg(format!("CertificateFile={}", other.display()))
        .arg("echo in");
    assert_refused_like(&run(&mut cmd, b""), &plain, "a broken revocation list");
    std::fs::write(&c.revoked, "").unwrap();
    assert!(logs_in(&seven));

    // A second CA, trusted by editing the file: its certificates log in.
    let foreign = c.sign("ca2", "id", "foreign", &["-I", "agent-d", "-n", "s1"]);
    assert_refused_like(
        &c.ssh(&server, &foreign, "s1", &["true"]),
        &plain,
        "ca2 untrusted",
    );
    let both = format!(
        "{}\n{}\n",
        c.client.public_key("ca"),
        c.client.public_key("ca2")
    );
    std::fs::write(&c.trusted, both).unwrap();
    assert!(logs_in(&foreign));
}

#[test]
fn force_command_and_permissions_of_a_certificate() {
    let Some(c) = Certs::new() else { return };
    let server = c.server("");
    let forced = c.sign(
        "ca",
        "id",
        "forced",
        &[
            "-I",
            "runner",
            "-n",
            "s1",
            "-O",
            "force-command=echo forced; echo \"orig=$SSH_ORIGINAL_COMMAND\"",
        ],
    );
    let out = c.ssh(&server, &forced, "s1", &["echo asked; exit 3"]);
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    assert_eq!(texts(&out).0, "forced\norig=echo asked; exit 3\n");
    // sftp under a forced command: refused, as with command= keys.
    let mut sftp = Command::new("sftp");
    sftp.args(c.client.common_opts("id"))
        .arg("-o")
        .arg(format!("CertificateFile={}", forced.display()))
        .arg("-P")
        .arg(server.ssh_port.to_string())
        .args(["-b", "-", "s1@127.0.0.1"]);
    assert!(!run(&mut sftp, b"pwd\n").status.success());

    // Permissions come from extensions only: -O no-pty takes the terminal.
    let no_pty = c.sign(
        "ca",
        "id",
        "no-pty",
        &["-I", "x", "-n", "s1", "-O", "no-pty"],
    );
    let out = c.ssh(&server, &no_pty, "s1", &["-tt", "tty"]);
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    assert!(texts(&out).1.contains("PTY allocation request failed"));
    let full = c.sign("ca", "id", "full", &["-I", "x", "-n", "s1"]);
    let out = c.ssh(&server, &full, "s1", &["-tt", "tty"]);
    assert!(texts(&out).0.contains("/dev/pts/"), "{:?}", texts(&out));
    // -O clear: no forwarding either (ssh -W is refused).
    let cleared = c.sign(
        "ca",
        "id",
        "cleared",
        &["-I", "x", "-n", "s1", "-O", "clear"],
    );
    let out = c.ssh(&server, &cleared, "s1", &["-W", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    assert_eq!(
        texts(&c.ssh(&server, &cleared, "s1", &["echo ok"])).0,
        "ok\n"
    );
    // A source-address the client is in.
    let near = c.sign(
        "ca",
        "id",
        "near",
        &["-I", "x", "-n", "s1", "-O", "source-address=127.0.0.0/8"],
    );
    assert_eq!(texts(&c.ssh(&server, &near, "s1", &["echo ok"])).0, "ok\n");
}

#[test]
fn without_trusted_cas_no_certificate_is_accepted() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "s1"]);
    let client = Client::new();
    client.keygen("ca");
    let out = Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(client.path("ca"))
        .args(["-I", "x", "-n", "s1"])
        .arg(client.path("other.pub"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let server = blink
        .server()
        .log_filter("warn,blink_server=info,blink=info")
        .start();
    let mut cmd = client.ssh(&server, "other", "s1");
    cmd.arg("true");
    let out = run(&mut cmd, b"");
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    assert!(
        server
            .wait_log(&["ssh certificate refused", "no ssh.trusted_user_ca_keys"])
            .is_some()
    );
}

#[test]
fn unusable_certificate_settings_stop_the_server_with_a_clear_error() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pub");
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "not a key\n").unwrap();
    for (config, expect) in [
        (
            format!(
                "[ssh]\ntrusted_user_ca_keys = {:?}",
                missing.display().to_string()
            ),
            "trusted user CA keys",
        ),
        (
            format!(
                "[ssh]\ntrusted_user_ca_keys = {:?}",
                garbage.display().to_string()
            ),
            "line 1",
        ),
        (
            format!("[ssh]\nrevoked_keys = {:?}", garbage.display().to_string()),
            "revoked keys",
        ),
        (
            "[ssh]\nwildcard_principal = \"admin\"".to_string(),
            "wildcard_principal",
        ),
    ] {
        let path = dir.path().join("blink.toml");
        std::fs::write(&path, format!("{config}\n[sandbox]\nephemeral_pool = 0\n")).unwrap();
        let out = run(
            Command::new(blink_e2e::bin("blink-server"))
                .arg("--data-dir")
                .arg(blink.data_dir.path())
                .args([
                    "--ssh-listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                ])
                .arg("--config")
                .arg(&path),
            b"",
        );
        let (_, stderr) = texts(&out);
        assert!(!out.status.success(), "{config}");
        assert!(stderr.contains(expect), "{config}: {stderr}");
    }
}
