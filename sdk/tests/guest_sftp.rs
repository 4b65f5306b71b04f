//! `blink-guest sftp-server`, the SFTP server that runs inside sandboxes,
//! tested without gateway or sandbox: OpenSSH's `sftp -D` drives the
//! embedded guest binary directly, and raw packets check error replies and
//! hostile input.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use blink_sdk::runtime::local::GUEST_BINARY;
use rand::RngCore;

/// Longest any single sftp run or server exit may take.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The guest binary written out, the server's home directory and a local
/// directory for the client's side of transfers.
struct Guest {
    dir: tempfile::TempDir,
    bin: PathBuf,
    home: PathBuf,
    local: PathBuf,
}

/// The guest binary, written once per test process before any test
/// spawns it: a binary written while another thread forks can fail to
/// execute with ETXTBSY (the child holds the write descriptor until it
/// execs).
fn guest_binary() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("blink-guest-{}", std::process::id()));
        let _ = std::fs::remove_file(&bin);
        std::fs::write(&bin, GUEST_BINARY).expect("write guest");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        bin
    })
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = guest_binary().to_path_buf();
        let home = dir.path().join("home");
        let local = dir.path().join("local");
        std::fs::create_dir(&home).expect("mkdir home");
        std::fs::create_dir(&local).expect("mkdir local");
        Guest {
            dir,
            bin,
            home,
            local,
        }
    }

    /// Run an `sftp -b` batch against the server; returns the exit status
    /// with stdout and stderr.
    fn sftp(&self, batch: &str) -> (ExitStatus, String, String) {
        let batch_file = self.dir.path().join("batch");
        std::fs::write(&batch_file, batch).expect("write batch");
        let stdout = self.dir.path().join("stdout");
        let stderr = self.dir.path().join("stderr");
        let server = format!(
            "{} sftp-server --home {}",
            self.bin.display(),
            self.home.display()
        );
        let mut child = Command::new("sftp")
            .arg("-b")
            .arg(&batch_file)
            .arg("-D")
            .arg(server)
            .current_dir(&self.local)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("run sftp");
        let status = wait(&mut child, TIMEOUT).expect("sftp did not finish in time");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (status, read(&stdout), read(&stderr))
    }

    fn raw(&self, extra: &[&str]) -> Raw {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let stdin = OwnedFd::from(theirs.try_clone().expect("dup"));
        let stderr = self.dir.path().join("server-stderr");
        let child = Command::new(&self.bin)
            .arg("sftp-server")
            .arg("--home")
            .arg(&self.home)
            .args(extra)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start sftp-server");
        ours.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut raw = Raw {
            child,
            sock: ours,
            stderr,
            next_id: 1,
        };
        raw.send(1, &3u32.to_be_bytes());
        let version = raw.recv();
        assert_eq!(&version[..5], &[2, 0, 0, 0, 3], "VERSION reply");
        raw
    }
}

fn wait(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sftp_available() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("sftp").is_file()));
    blink_sdk::testing::require(found, "sftp client missing (install openssh-client)")
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

/// A client speaking raw SFTP packets to the server over a socket pair.
struct Raw {
    child: Child,
    sock: UnixStream,
    stderr: PathBuf,
    next_id: u32,
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

impl Raw {
    fn send(&mut self, kind: u8, body: &[u8]) {
        let mut packet = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        packet.push(kind);
        packet.extend_from_slice(body);
        self.sock.write_all(&packet).expect("send packet");
    }

    fn recv(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.sock.read_exact(&mut len).expect("reply length");
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        self.sock.read_exact(&mut reply).expect("reply body");
        reply
    }

    /// Send a request with a fresh id followed by `body`; returns the reply.
    fn request(&mut self, kind: u8, body: &[u8]) -> Vec<u8> {
        let id = self.next_id;
        self.next_id += 1;
        let mut full = id.to_be_bytes().to_vec();
        full.extend_from_slice(body);
        self.send(kind, &full);
        let reply = self.recv();
        assert_eq!(&reply[1..5], &id.to_be_bytes(), "reply to request {id}");
        reply
    }

    /// A request answered by a STATUS: its code and message.
    fn status(&mut self, kind: u8, body: &[u8]) -> (u32, String) {
        let reply = self.request(kind, body);
        assert_eq!(reply[0], 101, "STATUS expected, got type {}", reply[0]);
        let code = u32::from_be_bytes(reply[5..9].try_into().unwrap());
        let len = u32::from_be_bytes(reply[9..13].try_into().unwrap()) as usize;
        let msg = String::from_utf8_lossy(&reply[13..13 + len]).into_owned();
        (code, msg)
    }

    fn server_stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

const FXP_STAT: u8 = 17;
const FXP_OPEN: u8 = 3;
const FXP_REALPATH: u8 = 16;
const FXP_SYMLINK: u8 = 20;
const FX_OK: u32 = 0;
const FX_NO_SUCH_FILE: u32 = 2;
const FX_BAD_MESSAGE: u32 = 5;

#[test]
fn sftp_transfers_are_byte_exact_and_resume() {
    if !sftp_available() {
        return;
    }
    let g = Guest::new();
    let data = random_bytes(16 << 20);
    std::fs::write(g.local.join("full"), &data).expect("write");
    // A partial upload and a partial download to resume.
    std::fs::write(g.home.join("part"), &data[..5_000_000]).expect("write");
    std::fs::write(g.local.join("partdown"), &data[..3_000_000]).expect("write");
    let (status, stdout, stderr) =
        g.sftp("put full up\nget up down\nreput full part\nreget up partdown\nls -l\n");
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("16777216"), "{stdout}");
    for (what, path) in [
        ("upload", g.home.join("up")),
        ("download", g.local.join("down")),
        ("resumed upload", g.home.join("part")),
        ("resumed download", g.local.join("partdown")),
    ] {
        let got = std::fs::read(&path).expect("read result");
        assert!(got == data, "{what} differs ({} bytes)", got.len());
    }
}

#[test]
fn sftp_file_operations() {
    if !sftp_available() {
        return;
    }
    let g = Guest::new();
    std::fs::write(g.local.join("a"), b"hello").expect("write");
    let (status, stdout, stderr) = g.sftp(
        "pwd\nmkdir dir\nput a a\nrename a dir/b\nls -l dir\nchmod 600 dir/b\n\
         ln -s dir/b sym\nln dir/b hard\nls -l\ndf\nrm hard\nmkdir empty\nrmdir empty\n\
         -rmdir dir\n",
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    let home = g.home.canonicalize().expect("home");
    assert!(
        stdout.contains(&format!("Remote working directory: {}", home.display())),
        "{stdout}"
    );
    // `ls -l` long names as OpenSSH's server writes them.
    assert!(stdout.contains("-rw-r--r--    1 "), "{stdout}");
    assert!(stdout.contains("-rw-------    2 "), "{stdout}");
    assert!(stdout.contains("lrwxrwxrwx    1 "), "{stdout}");
    assert!(stdout.contains("Avail"), "df: {stdout}");
    // rmdir of a non-empty directory failed, and said so.
    assert!(stderr.contains("rmdir"), "{stderr}");

    let b = std::fs::metadata(g.home.join("dir/b")).expect("renamed file");
    assert_eq!(b.mode() & 0o7777, 0o600);
    assert_eq!(b.nlink(), 1, "hard link removed");
    assert!(!g.home.join("a").exists() && !g.home.join("hard").exists());
    assert!(!g.home.join("empty").exists());
    assert_eq!(
        std::fs::read_link(g.home.join("sym")).expect("symlink"),
        Path::new("dir/b")
    );
}

#[test]
fn missing_path_is_no_such_file() {
    let g = Guest::new();
    let mut raw = g.raw(&[]);
    let (code, msg) = raw.status(FXP_STAT, &string(b"no/such/file"));
    assert_eq!(code, FX_NO_SUCH_FILE, "{msg}");
    assert!(msg.contains("No such file"), "{msg}");
    // Relative paths and "" resolve against the home directory.
    let reply = raw.request(FXP_REALPATH, &string(b""));
    let home = g.home.canonicalize().expect("home");
    assert_eq!(reply[0], 104, "NAME reply");
    assert_eq!(
        &reply[13..13 + home.as_os_str().len()],
        home.as_os_str().as_encoded_bytes()
    );
}

#[test]
fn symlink_argument_order() {
    let g = Guest::new();
    let mut body = string(b"target");
    body.extend(string(b"openssh-order"));
    assert_eq!(g.raw(&[]).status(FXP_SYMLINK, &body).0, FX_OK);
    let mut body = string(b"draft-order");
    body.extend(string(b"target"));
    let mut draft = g.raw(&["--symlink-order", "draft"]);
    assert_eq!(draft.status(FXP_SYMLINK, &body).0, FX_OK);
    for link in ["openssh-order", "draft-order"] {
        assert_eq!(
            std::fs::read_link(g.home.join(link)).expect(link),
            Path::new("target")
        );
    }
}

#[test]
fn malformed_request_gets_bad_message_and_the_server_goes_on() {
    let g = Guest::new();
    let mut raw = g.raw(&[]);
    // OPEN cut short after its path.
    let (code, msg) = raw.status(FXP_OPEN, &string(b"x"));
    assert_eq!(code, FX_BAD_MESSAGE, "{msg}");
    // A string longer than the packet.
    let (code, _) = raw.status(FXP_STAT, &u32::MAX.to_be_bytes());
    assert_eq!(code, FX_BAD_MESSAGE);
    // Still serving.
    assert_eq!(raw.request(FXP_STAT, &string(b".."))[0], 105, "ATTRS reply");
    drop(raw.sock);
    let status = wait(&mut raw.child, TIMEOUT).expect("server exits at EOF");
    assert!(status.success(), "{status}");
}

#[test]
fn oversized_packet_ends_the_server() {
    let g = Guest::new();
    let mut raw = g.raw(&[]);
    raw.sock
        .write_all(&[0x7f, 0xff, 0xff, 0xff, 17, 0, 0, 0, 1])
        .expect("send");
    let status = wait(&mut raw.child, Duration::from_secs(10)).expect("server exits, no hang");
    assert!(!status.success(), "{status}");
    let stderr = raw.server_stderr();
    assert!(stderr.contains("packet too long"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
