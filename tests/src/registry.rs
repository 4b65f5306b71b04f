//! Registries for the pull tests, on loopback only.
//!
//! - [`Registry`]: a real one, Debian's `docker-registry` (CNCF
//!   distribution 2.8), plain or behind htpasswd Basic auth, with its
//!   storage in a temporary directory (so a test can corrupt a blob) and
//!   its request log kept (so a test can count what was fetched).
//! - [`Layout`]: OCI image layouts the tests build (layers of chosen files,
//!   gzip or zstd, images, multi-platform indexes), pushed into a
//!   [`Registry`] with Debian's `skopeo`.
//! - [`HostileRegistry`]: a test double for what no real registry does
//!   (answer with a redirect loop, an endless manifest): a few lines of
//!   HTTP on a loopback port.
//! - [`TokenServer`]: a test double of a registry's token service (the
//!   realm of its `WWW-Authenticate: Bearer` challenge; Debian packages
//!   none), issuing JWTs signed with `openssl` that the real registry
//!   verifies against the certificate it is configured with.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest as _;

/// Whether the registry tools are installed; a test without them is
/// reported skipped (and fails under `CI=true`).
pub fn tools_available() -> bool {
    let missing: Vec<&str> = ["docker-registry", "skopeo", "htpasswd", "openssl"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    blink_sdk::testing::require(
        missing.is_empty(),
        &format!(
            "{} not installed (scripts/install-deps.sh)",
            missing.join(", ")
        ),
    )
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A `docker-registry` on 127.0.0.1, killed when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    /// `(user, password)` when it wants Basic auth.
    pub auth: Option<(String, String)>,
}

impl Registry {
    /// A registry anyone may pull from and push to.
    pub fn start() -> Self {
        Self::launch(None, None)
    }

    /// A registry that wants `user`/`password` (htpasswd, bcrypt).
    pub fn with_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_owned(), password.to_owned())), None)
    }

    /// A registry that wants bearer tokens from `tokens` (whose user and
    /// password skopeo pushes with).
    pub fn with_tokens(tokens: &TokenServer) -> Self {
        Self::launch(
            Some((tokens.user.clone(), tokens.password.clone())),
            Some(tokens),
        )
    }

    fn launch(auth: Option<(String, String)>, tokens: Option<&TokenServer>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("blink-registry-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).expect("mkdir storage");
        let auth_yaml = match (&auth, tokens) {
            (_, Some(t)) => format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                t.host(),
                t.cert.display()
            ),
            (Some((user, password)), None) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd");
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: blink-test\n    path: {}\n",
                    file.display()
                )
            }
            (None, None) => String::new(),
        };
        for _ in 0..5 {
            let port = crate::free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                    root.display()
                ),
            )
            .expect("write config");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn docker-registry");
            let log = Arc::new(Mutex::new(String::new()));
            let (tx, rx) = std::sync::mpsc::channel();
            let stderr = child.stderr.take().expect("stderr");
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("listening on") {
                        let _ = tx.send(true);
                    }
                    if line.contains("address already in use") {
                        let _ = tx.send(false);
                    }
                    if let Ok(mut l) = sink.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(true) => {
                    return Self {
                        child,
                        port,
                        dir,
                        log,
                        auth,
                    };
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("docker-registry did not start");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push the layout's image tagged `tag` to `repo:dest_tag` here
    /// (`--all`: an index with every image it lists).
    pub fn push(&self, layout: &Layout, tag: &str, dest: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.auth {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.dir().display()))
            .arg(format!("docker://{}/{dest}", self.host()));
        let out = cmd.output().expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the registry keeps a blob's bytes (to break them).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `http.response.written` of each completed GET of the blob, in order.
    pub fn blob_gets(&self, digest: &str) -> Vec<u64> {
        let uri = format!("/blobs/{digest}");
        self.log()
            .lines()
            .filter(|l| {
                l.contains("response completed")
                    && l.contains("http.request.method=GET")
                    && l.contains(&uri)
            })
            .filter_map(|l| {
                let rest = l.split("http.response.written=").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A layer: a tar of files, compressed.
#[derive(Debug, Clone)]
pub struct Layer {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

/// A layer of one file of `len` random bytes at `path` (nothing shared
/// with any other layer).
pub fn random_layer(path: &str, len: usize) -> Layer {
    use rand::RngCore as _;
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    Layer::of(&[(path, &data, 0o644)], Compression::Gzip)
}

/// How a layer is compressed (gzip at level 0: the tests' layers are
/// mostly random bytes, and a debug build of flate2 is slow to compress).
#[derive(Debug, Clone, Copy)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Layer {
    /// A layer of `(path, contents, mode)` files; `->target` as contents
    /// makes a symlink, a path ending in `/` a directory.
    pub fn of(files: &[(&str, &[u8], u32)], compression: Compression) -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_mtime(0);
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, path, std::io::empty())
                    .expect("tar");
            } else if let Some(target) = data.strip_prefix(b"->") {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_link_name(std::str::from_utf8(target).expect("utf-8 link"))
                    .expect("link");
                tar.append_data(&mut h, path, std::io::empty())
                    .expect("tar");
            } else {
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, *data).expect("tar");
            }
        }
        let tar = tar.into_inner().expect("tar");
        let (bytes, media_type) = match compression {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
                gz.write_all(&tar).expect("gzip");
                (
                    gz.finish().expect("gzip"),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).expect("zstd"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Self {
            bytes,
            media_type,
            diff_id: sha256(&tar),
        }
    }

    /// A busybox userland: the host's static busybox, `sh` beside it.
    pub fn busybox() -> Self {
        let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
        Self::of(
            &[
                ("bin/", b"", 0o755),
                ("etc/", b"", 0o755),
                ("bin/busybox", &busybox, 0o755),
                ("bin/sh", b"->busybox", 0o777),
                ("bin/cat", b"->busybox", 0o777),
                ("bin/echo", b"->busybox", 0o777),
            ],
            Compression::Gzip,
        )
    }
}

/// An OCI image layout being built in a temporary directory.
pub struct Layout {
    dir: tempfile::TempDir,
    index: Vec<Value>,
}

impl Default for Layout {
    fn default() -> Self {
        Self::new()
    }
}

impl Layout {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("blink-layout-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        let layout = Self {
            dir,
            index: Vec::new(),
        };
        layout.write_index();
        layout
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Store a blob; its descriptor.
    pub fn blob(&self, media_type: &str, data: &[u8]) -> Value {
        let digest = sha256(data);
        let path = self
            .dir
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        std::fs::write(path, data).expect("write blob");
        json!({"mediaType": media_type, "digest": digest, "size": data.len()})
    }

    /// An image of these layers for `linux/<arch>`; its manifest's
    /// descriptor. `annotations` pad the manifest (size-limit tests).
    pub fn image(&self, layers: &[Layer], arch: &str, annotations: Value) -> Value {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let layers: Vec<Value> = layers
            .iter()
            .map(|l| self.blob(l.media_type, &l.bytes))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
            "annotations": annotations,
        });
        let mut desc = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        desc["platform"] = json!({"architecture": arch, "os": "linux"});
        desc
    }

    /// An index of these manifests; its descriptor.
    pub fn index_of(&self, manifests: &[Value]) -> Value {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        self.blob(
            "application/vnd.oci.image.index.v1+json",
            index.to_string().as_bytes(),
        )
    }

    /// Name `desc` `tag` in the layout's index.json.
    pub fn tag(&mut self, tag: &str, desc: &Value) {
        let mut d = desc.clone();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        if let Some(obj) = d.as_object_mut() {
            obj.remove("platform");
        }
        self.index.push(d);
        self.write_index();
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "manifests": self.index});
        std::fs::write(self.dir.path().join("index.json"), index.to_string()).expect("index");
    }
}

const TOKEN_SERVICE: &str = "blink-test-registry";
const TOKEN_ISSUER: &str = "blink-test-issuer";

/// A registry's token service (see the module doc): `GET /token?scope=
/// repository:NAME:ACTIONS&service=...` with Basic `user:password` gets a
/// JWT granting those actions; anything else gets 401. It counts the
/// tokens it issued.
pub struct TokenServer {
    pub port: u16,
    pub user: String,
    pub password: String,
    pub issued: Arc<std::sync::atomic::AtomicU64>,
    cert: PathBuf,
    _dir: tempfile::TempDir,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenServer {
    pub fn start(user: &str, password: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("blink-tokens-")
            .tempdir()
            .expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=blink-test-tokens", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509");
        assert!(der.status.success());
        let x5c = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&der.stdout)
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let basic = {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        };
        let (stop2, issued2) = (stop.clone(), issued.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(600);
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                        && v.trim() == basic
                    {
                        authorized = true;
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("");
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
                let scopes: Vec<String> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .map(|s| {
                        s.replace("%3A", ":")
                            .replace("%2F", "/")
                            .replace("%2C", ",")
                    })
                    .collect();
                let response = if !authorized {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 22\r\nConnection: close\r\n\r\n{\"details\":\"bad auth\"}".to_owned()
                } else {
                    let token = sign_token(&key, &x5c, &scopes);
                    issued2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = json!({"token": token, "access_token": token, "expires_in": 300})
                        .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = conn.write_all(response.as_bytes());
            }
        });
        Self {
            port,
            user: user.to_owned(),
            password: password.to_owned(),
            issued,
            cert,
            _dir: dir,
            stop,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A JWT (RS256, the certificate in `x5c`) granting `scopes`
/// (`repository:NAME:pull,push`), as distribution's token auth verifies.
fn sign_token(key: &Path, x5c: &str, scopes: &[String]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let access: Vec<Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header = json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
    let claims = json!({
        "iss": TOKEN_ISSUER, "sub": "agent", "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", rand::random::<u64>()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(signing_input.as_bytes())
        .expect("sign");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(out.status.success(), "openssl dgst failed");
    format!("{signing_input}.{}", b64url(&out.stdout))
}

/// What a [`HostileRegistry`] does to every request.
#[derive(Debug, Clone, Copy)]
pub enum Hostility {
    /// `307` to the same URL, forever.
    RedirectLoop,
    /// `/v2/` answers 200; a manifest is a JSON body that never ends.
    EndlessManifest,
}

/// A test double of a broken or hostile registry (see the module doc):
/// plain HTTP on 127.0.0.1, one thread per connection, stopped when
/// dropped. It counts the bytes it sent.
pub struct HostileRegistry {
    pub port: u16,
    pub sent: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl HostileRegistry {
    pub fn start(kind: Hostility) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(300);
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (stop3, sent3) = (stop2.clone(), sent2.clone());
                        std::thread::spawn(move || serve(conn, kind, port, &stop3, &sent3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, sent, stop }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn serve(
    conn: TcpStream,
    kind: Hostility,
    port: u16,
    stop: &std::sync::atomic::AtomicBool,
    sent: &std::sync::atomic::AtomicU64,
) {
    use std::sync::atomic::Ordering;
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    // Several requests per connection (keep-alive), each headers only.
    for _ in 0..100 {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        match kind {
            Hostility::RedirectLoop => {
                let resp = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{port}{path}\r\nContent-Length: 0\r\n\r\n"
                );
                if conn.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
            Hostility::EndlessManifest => {
                if !path.contains("/manifests/") {
                    let resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
                    if conn.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                    continue;
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 << 10];
                let framed = [
                    format!("{:x}\r\n", chunk.len()).into_bytes(),
                    chunk,
                    b"\r\n".to_vec(),
                ]
                .concat();
                // Bounded: at most 4 GiB or 120 s, whichever is first.
                let until = Instant::now() + Duration::from_secs(120);
                for _ in 0..(1 << 16) {
                    if stop.load(Ordering::SeqCst) || Instant::now() > until {
                        return;
                    }
                    if conn.write_all(&framed).is_err() {
                        return;
                    }
                    sent.fetch_add(framed.len() as u64, Ordering::SeqCst);
                }
                return;
            }
        }
    }
    let _ = reader.read(&mut [0u8; 1]);
}
