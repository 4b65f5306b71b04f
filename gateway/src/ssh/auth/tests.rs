//! Certificates and revocation lists made by the real `ssh-keygen`
//! (`-s` signs, `-k` writes KRLs), judged by `certs.rs` and
//! `revocation.rs`; `ssh-keygen -Q` is the oracle for KRLs. The same
//! rules end to end, with OpenSSH's client: tests/tests/ssh_certs.rs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use russh::keys::{Certificate, PublicKey};

use super::Grant;
use super::certs::CertCheck;
use super::revocation::{RevocationList, blob};

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    /// `None` (the test skipped) without ssh-keygen.
    fn new() -> Option<Self> {
        let found = Command::new("ssh-keygen").arg("-?").output().is_ok();
        if !blink_sdk::testing::require(found, "ssh-keygen (openssh-client)") {
            return None;
        }
        let keys = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        for name in ["ca", "ca2", "user", "other"] {
            keys.keygen(name);
        }
        Some(keys)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn keygen(&self, name: &str) {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(self.path(name))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Sign `user.pub` with `ca` and these `ssh-keygen -s` arguments into
    /// `<name>-cert.pub`.
    fn sign(&self, ca: &str, name: &str, args: &[&str]) -> Certificate {
        std::fs::copy(self.path("user.pub"), self.path(&format!("{name}.pub"))).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-q")
            .arg("-s")
            .arg(self.path(ca))
            .args(args)
            .arg(self.path(&format!("{name}.pub")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Certificate::read_file(&self.path(&format!("{name}-cert.pub"))).unwrap()
    }

    fn public(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.pub"))).unwrap()
    }

    fn ca_file(&self, cas: &[&str]) -> PathBuf {
        let path = self.path("trusted");
        let text: String = cas.iter().map(|c| self.public(c)).collect();
        std::fs::write(&path, format!("# trusted\n\n{text}")).unwrap();
        path
    }
}

fn check(path: &Path, wildcard: Option<&str>, skew: u64) -> CertCheck {
    CertCheck::open(path, wildcard.map(str::to_string), skew).unwrap()
}

fn refusal(c: &CertCheck, cert: &Certificate, session: &str) -> String {
    match c.check(cert, session, LOOPBACK, SystemTime::now()) {
        Ok(g) => panic!("accepted: {:?}", g.grant),
        Err(e) => e,
    }
}

#[test]
fn certificates_as_sshd_judges_them() {
    let Some(k) = Keys::new() else { return };
    let trusted = k.ca_file(&["ca"]);
    let c = check(&trusted, Some("*"), 60);
    let now = SystemTime::now();

    let valid = k.sign(
        "ca",
        "valid",
        &["-I", "agent-1", "-n", "s1,s2", "-V", "-1m:+5m"],
    );
    for session in ["s1", "s2"] {
        let g = c.check(&valid, session, LOOPBACK, now).unwrap();
        assert_eq!(g.grant, Grant::Session);
        assert!(g.options.pty_allowed() && g.options.port_forwarding_allowed());
        assert_eq!(g.options.forced_command(), None);
    }
    assert!(refusal(&c, &valid, "s3").contains("do not name the session"));

    let e = refusal(
        &c,
        &k.sign("ca", "expired", &["-I", "x", "-n", "s1", "-V", "-10m:-5m"]),
        "s1",
    );
    assert!(e.starts_with("expired"), "{e}");
    let e = refusal(
        &c,
        &k.sign("ca", "future", &["-I", "x", "-n", "s1", "-V", "+5m:+10m"]),
        "s1",
    );
    assert!(e.starts_with("not valid yet"), "{e}");
    // Within the clock skew, both ends are taken.
    let lenient = check(&trusted, None, 600);
    for name in ["expired", "future"] {
        let cert = Certificate::read_file(&k.path(&format!("{name}-cert.pub"))).unwrap();
        assert!(lenient.check(&cert, "s1", LOOPBACK, now).is_ok(), "{name}");
    }

    let foreign = k.sign("ca2", "foreign", &["-I", "x", "-n", "s1"]);
    assert!(refusal(&c, &foreign, "s1").contains("not a trusted CA"));
    let e = refusal(&c, &k.sign("ca", "nobody", &["-I", "x"]), "s1");
    assert!(e.contains("no principals"), "{e}");
    let e = refusal(
        &c,
        &k.sign("ca", "host", &["-I", "x", "-h", "-n", "s1"]),
        "s1",
    );
    assert!(e.contains("host certificate"), "{e}");

    // The wildcard principal reaches every session, as an admin key.
    let wild = k.sign("ca", "wild", &["-I", "ops", "-n", "*"]);
    assert_eq!(
        c.check(&wild, "anything", LOOPBACK, now).unwrap().grant,
        Grant::Admin
    );
    assert!(
        check(&trusted, None, 60)
            .check(&wild, "s1", LOOPBACK, now)
            .is_err()
    );

    // Critical options and extensions become key options.
    let forced = k.sign(
        "ca",
        "forced",
        &[
            "-I",
            "x",
            "-n",
            "s1",
            "-O",
            "force-command=echo forced",
            "-O",
            "no-pty",
        ],
    );
    let g = c.check(&forced, "s1", LOOPBACK, now).unwrap();
    assert_eq!(g.options.forced_command(), Some("echo forced"));
    assert!(!g.options.pty_allowed() && g.options.port_forwarding_allowed());
    let cleared = k.sign("ca", "cleared", &["-I", "x", "-n", "s1", "-O", "clear"]);
    let g = c.check(&cleared, "s1", LOOPBACK, now).unwrap();
    assert!(!g.options.pty_allowed() && !g.options.port_forwarding_allowed());
    let far = k.sign(
        "ca",
        "far",
        &["-I", "x", "-n", "s1", "-O", "source-address=10.0.0.0/8"],
    );
    assert!(refusal(&c, &far, "s1").contains("does not match"));
    let near = k.sign(
        "ca",
        "near",
        &[
            "-I",
            "x",
            "-n",
            "s1",
            "-O",
            "source-address=127.0.0.0/8,::1",
        ],
    );
    assert!(c.check(&near, "s1", LOOPBACK, now).is_ok());
    let odd = k.sign(
        "ca",
        "odd",
        &["-I", "x", "-n", "s1", "-O", "critical:frob@example.com=1"],
    );
    assert!(refusal(&c, &odd, "s1").contains("frob@example.com"));

    // The trusted file is read again when it changes: ca2 trusted now.
    k.ca_file(&["ca", "ca2"]);
    assert!(c.check(&foreign, "s1", LOOPBACK, now).is_ok());
    // A broken file trusts nobody (and says why), until it is fixed.
    std::fs::write(&trusted, "not a key\n").unwrap();
    assert!(refusal(&c, &valid, "s1").contains("line 1"));
    k.ca_file(&["ca"]);
    assert!(c.check(&valid, "s1", LOOPBACK, now).is_ok());
}

/// `ssh-keygen -Q`'s verdict on a certificate or key file.
fn oracle(krl: &Path, file: &Path) -> bool {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("REVOKED")
}

/// `ssh-keygen -k`, writing `krl` from these spec lines (and `-s ca`
/// when given).
fn make_krl(k: &Keys, krl: &str, ca: Option<&str>, spec: &str) -> RevocationList {
    let spec_path = k.path(&format!("{krl}.spec"));
    std::fs::write(&spec_path, spec).unwrap();
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-k", "-f"]).arg(k.path(krl));
    if let Some(ca) = ca {
        cmd.arg("-s").arg(k.path(&format!("{ca}.pub")));
    }
    let out = cmd.arg(&spec_path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    RevocationList::parse(&std::fs::read(k.path(krl)).unwrap()).unwrap()
}

#[test]
fn krls_written_by_ssh_keygen() {
    let Some(k) = Keys::new() else { return };
    let list = make_krl(
        &k,
        "krl",
        Some("ca"),
        "serial: 42\nserial: 100-199\nserial: 1000\nserial: 5000-5002\nid: revoked-id\n",
    );
    let krl = k.path("krl");
    let mut revoked = Vec::new();
    for (ca, serial, id) in [
        ("ca", "42", "a"),
        ("ca", "43", "a"),
        ("ca", "100", "a"),
        ("ca", "199", "a"),
        ("ca", "200", "a"),
        ("ca", "1000", "a"),
        ("ca", "5001", "a"),
        ("ca", "7", "revoked-id"),
        ("ca", "0", "a"),
        ("ca2", "42", "a"),
        ("ca2", "7", "revoked-id"),
    ] {
        let name = format!("c-{ca}-{serial}-{id}");
        let cert = k.sign(ca, &name, &["-I", id, "-n", "s1", "-z", serial]);
        let ours = list.cert_revoked(&blob(cert.signature_key()), cert.serial(), cert.key_id());
        let theirs = oracle(&krl, &k.path(&format!("{name}-cert.pub")));
        assert_eq!(ours, theirs, "{name}");
        assert_eq!(
            list.refuses(cert.public_key(), Some(&cert)).is_some(),
            ours,
            "{name}"
        );
        if ours {
            revoked.push(name);
        }
    }
    assert_eq!(
        revoked,
        [
            "c-ca-42-a",
            "c-ca-100-a",
            "c-ca-199-a",
            "c-ca-1000-a",
            "c-ca-5001-a",
            "c-ca-7-revoked-id"
        ],
        "serials and ids under ca only"
    );

    // Plain keys: explicitly, by SHA-256 hash, by fingerprint.
    let other_fp = PublicKey::from_openssh(&k.public("other"))
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    let spec = format!(
        "key: {}sha256: {}hash: {other_fp}\n",
        k.public("user"),
        k.public("ca2")
    );
    let keys = make_krl(&k, "keys", None, &spec);
    let key_blob = |name: &str| blob(PublicKey::from_openssh(&k.public(name)).unwrap().key_data());
    for name in ["user", "ca2", "other", "ca"] {
        let theirs = oracle(&k.path("keys"), &k.path(&format!("{name}.pub")));
        assert_eq!(keys.key_revoked(&key_blob(name)), theirs, "{name}");
        assert_eq!(theirs, name != "ca", "{name}");
    }
    // A certificate whose key, or whose CA key, is revoked is refused.
    let cert = k.sign("ca", "of-user", &["-I", "x", "-n", "s1"]);
    assert_eq!(
        keys.refuses(cert.public_key(), Some(&cert)),
        Some("the key is revoked")
    );
    let by_ca2 = k.sign("ca2", "by-ca2", &["-I", "x", "-n", "s1"]);
    assert!(keys.key_revoked(&blob(by_ca2.public_key())));
    let fresh = {
        k.keygen("fresh");
        std::fs::copy(k.path("fresh.pub"), k.path("user.pub")).unwrap();
        k.sign("ca2", "fresh-by-ca2", &["-I", "x", "-n", "s1"])
    };
    assert_eq!(
        keys.refuses(fresh.public_key(), Some(&fresh)),
        Some("the certificate's CA key is revoked")
    );
    assert!(oracle(&k.path("keys"), &k.path("fresh-by-ca2-cert.pub")));
}
