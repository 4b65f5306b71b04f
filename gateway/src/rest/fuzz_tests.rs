//! Property-based fuzzing of the REST request bodies, through the real
//! router in-process (`tower::ServiceExt::oneshot`): arbitrary bytes and
//! arbitrary JSON values as the body of every route that takes one, and
//! structured bodies with hostile field values. Every answer must come
//! quickly, never be a 5xx, and an error must be the API's JSON error
//! shape with a code and a message.
//!
//! Why property-based (proptest) and not coverage-guided: these run inside
//! the ordinary `cargo test --workspace` on stable in CI. cargo-fuzz
//! (libFuzzer, with `RUSTC_BOOTSTRAP=1`) and afl.rs (without its optional
//! LLVM plugins, which need LLVM 22 tools that Debian 12 lacks) both work
//! on this machine, but as separate long-running processes; and
//! `blink-server` is a binary crate, so no fuzz target can link its router
//! or config. See docs/TESTING.md. A long run: `PROPTEST_CASES=20000 cargo
//! test -p blink-server fuzz_tests`.
//!
//! Requests that would start a sandbox never get that far: the manager's
//! default image does not exist (runs and opens fail with "image not
//! found"), spawns and session runs name a session that does not exist,
//! and bodies naming the built-in default image are left out. Pulls never
//! leave the machine: sessions and runs do not pull on demand, and
//! `POST /api/images/pull` may only name a registry on a closed loopback
//! port (`[images] allowed_registries`): everything else is refused.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use blink_sdk::manager::{Manager, ManagerConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::run_registry::RunRegistry;
use super::{AppState, RestConfig, router};

/// `n` cases in CI; `PROPTEST_CASES` overrides it for a long run.
pub(crate) fn cases(n: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = n;
    }
    config.max_shrink_iters = 256;
    config
}

const MAX_BODY: usize = 16 << 10;
/// A session that exists (a stopped record, never started here).
const SESSION: &str = "fuzz";

/// The routes that read a body, with the path used for them.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/runs"),
    ("POST", "/api/runs?wait=false"),
    ("POST", "/api/sessions"),
    ("POST", "/api/sessions/nosuch/runs"),
    ("POST", "/api/sessions/nosuch/spawn"),
    ("POST", "/api/sessions/fuzz/keys"),
    ("POST", "/api/sessions/nosuch/keys"),
    ("PATCH", "/api/sessions/fuzz/resources"),
    ("PATCH", "/api/sessions/nosuch/resources"),
    ("PUT", "/api/sessions/fuzz/recording"),
    ("PUT", "/api/sessions/nosuch/recording"),
    ("POST", "/api/images/pull"),
];

struct Env {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let session_dir = dir.path().join("sessions").join(SESSION);
        std::fs::create_dir_all(&session_dir).unwrap();
        std::fs::write(
            session_dir.join("session.json"),
            json!({
                "name": SESSION, "box_id": "b-fuzz", "image": "fuzz/none:latest", "warm": false,
                "runtime": "local", "created_at": 0, "last_used_at": 0,
            })
            .to_string(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = ManagerConfig::new(dir.path());
        config.default_image = "fuzz/none:latest".into();
        config.pull.pull = blink_sdk::image::PullPolicy::Never;
        config.pull.allowed_registries = vec!["127.0.0.1:1".into()];
        let manager = rt.block_on(Manager::open(config)).unwrap();
        let rest = RestConfig {
            max_body_bytes: MAX_BODY,
            max_concurrent_runs: 2,
            max_queued_runs: 1000,
            max_run_timeout_secs: 60,
            ..RestConfig::default()
        };
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let state = AppState {
            manager,
            runs: Arc::new(RunRegistry::new(2, 1000, 1000, 100)),
            config: Arc::new(rest),
            script_dirs: Arc::new(Vec::new()),
            shutdown,
            attachments: Arc::new(tokio::sync::Semaphore::new(4)),
            recordings: crate::recording::Recordings::new(
                crate::recording::RecordingConfig {
                    enabled: true,
                    ..Default::default()
                },
                dir.path(),
            ),
            vhub: None,
        };
        let guard = Arc::new(super::guard::Guard::new(
            &state.config,
            std::net::SocketAddr::from(([127, 0, 0, 1], 8787)),
        ));
        let (app, _) = rt.block_on(async { router(state, guard) });
        Self { rt, app, _dir: dir }
    }

    /// Send one request; check the answer.
    fn check(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(), TestCaseError> {
        // Never let a body reach the built-in default image (it would be
        // built from the host's busybox).
        if body.windows(7).any(|w| w.eq_ignore_ascii_case(b"default")) {
            return Ok(());
        }
        // As a local control plane sends it: the Host guard lets it in.
        let mut req = Request::builder()
            .header(header::HOST, "127.0.0.1:8787")
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(Body::from(body.clone())).unwrap();
        let app = self.app.clone();
        let answer = self.rt.block_on(async move {
            let resp = tokio::time::timeout(Duration::from_secs(20), app.oneshot(req))
                .await
                .map_err(|_| "no answer in 20 s".to_string())?
                .map_err(|e| format!("router error: {e}"))?;
            let status = resp.status();
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok::<_, String>((status, ct, bytes))
        });
        let (status, ct, bytes) = answer.map_err(TestCaseError::fail)?;
        let shown = String::from_utf8_lossy(&bytes);
        prop_assert!(
            !status.is_server_error(),
            "{method} {path} with {:?} answered {status}: {shown}",
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() {
            prop_assert!(
                ct.as_deref()
                    .is_some_and(|c| c.starts_with("application/json")),
                "{status} without a JSON body: {ct:?}"
            );
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                TestCaseError::fail(format!("error body is not JSON ({e}): {shown}"))
            })?;
            let code = v["error"]["code"].as_str().unwrap_or_default();
            let message = v["error"]["message"].as_str().unwrap_or_default();
            prop_assert!(
                !code.is_empty() && !message.trim().is_empty(),
                "bad error body {shown}"
            );
            if body.len() > MAX_BODY {
                prop_assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
            }
        }
        Ok(())
    }
}

fn run(name: &'static str, n: u32, mut test: impl FnMut(&mut TestRunner) -> Result<(), String>) {
    let mut config = cases(n);
    config.source_file = Some(file!());
    config.failure_persistence = Some(Box::new(FileFailurePersistence::SourceParallel(
        "proptest-regressions",
    )));
    let mut runner = TestRunner::new(config);
    if let Err(e) = test(&mut runner) {
        panic!("{name}: {e}");
    }
}

fn route() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop::sample::select(ROUTES)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The body fields of every route, and some that are none.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "script", "command", "session", "args", "env", "cwd", "stdin", "timeout_secs",
            "image", "reference", "name", "warm", "exclusive", "tty", "rows", "cols", "key", "cpus",
            "memory_mib", "pids", "run_timeout_secs", "idle_timeout_secs", "script_base64",
            "script_name", "stdin_base64",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        Just(String::new()),
        Just("\u{0}".to_string()),
        Just("a=b".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("/etc/passwd".to_string()),
        "[a-z0-9._-]{1,70}",
        "\\PC{200,400}",
    ]
}

/// Bodies shaped like the real ones, with hostile values, each with a
/// route that takes it.
fn structured_body() -> impl Strategy<Value = ((&'static str, &'static str), Value)> {
    let argv = || prop::collection::vec(hostile_string(), 0..4);
    let env = || prop::collection::btree_map(hostile_string(), hostile_string(), 0..3);
    let int = || {
        prop_oneof![
            4 => (1u64..100).prop_map(|n| json!(n)),
            1 => prop::sample::select(vec![
                json!(0), json!(u64::MAX), json!(-1), json!(1001), json!(70000), json!(1.5), json!("5"),
            ]),
        ]
    };
    let run = || {
        (
            prop::option::weighted(0.2, hostile_string()),
            prop::option::weighted(0.9, argv()),
            prop::option::weighted(0.2, hostile_string()),
            argv(),
            env(),
            prop::option::of(int()),
            prop::option::weighted(0.3, hostile_string()),
            // Inline scripts and stdin: base64 or not, names hostile.
            prop::option::weighted(
                0.2,
                (
                    prop_oneof![hostile_string(), "[A-Za-z0-9+/]{0,40}={0,2}"],
                    prop::option::of(hostile_string()),
                    prop::option::of(prop_oneof![hostile_string(), "[A-Za-z0-9+/]{0,40}"]),
                ),
            ),
        )
            .prop_map(
                |(script, command, session, args, env, timeout, image, inline)| {
                    let mut m = serde_json::Map::new();
                    if let Some((script, name, stdin)) = inline {
                        m.insert("script_base64".into(), json!(script));
                        if let Some(n) = name {
                            m.insert("script_name".into(), json!(n));
                        }
                        if let Some(s) = stdin {
                            m.insert("stdin_base64".into(), json!(s));
                        }
                    }
                    if let Some(s) = script {
                        m.insert("script".into(), json!(s));
                    }
                    if let Some(c) = command {
                        m.insert("command".into(), json!(c));
                    }
                    if let Some(s) = session {
                        m.insert("session".into(), json!(s));
                    }
                    m.insert("args".into(), json!(args));
                    m.insert("env".into(), json!(env));
                    if let Some(t) = timeout {
                        m.insert("timeout_secs".into(), t);
                    }
                    if let Some(i) = image {
                        m.insert("image".into(), json!(i));
                    }
                    Value::Object(m)
                },
            )
    };
    let open = (hostile_string(), prop::option::of(any::<bool>()), prop::option::of(hostile_string()), any::<bool>())
        .prop_map(|(name, warm, image, exclusive)| json!({"name": name, "warm": warm, "image": image, "exclusive": exclusive}));
    let spawn = (argv(), env(), any::<bool>(), prop::option::of(int()), prop::option::of(int()))
        .prop_map(|(command, env, tty, rows, cols)| json!({"command": command, "env": env, "tty": tty, "rows": rows, "cols": cols}));
    let key = prop_oneof![
        hostile_string(),
        Just("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAA3W05+gRBgnqvpB+K8edFacp+V8Zn7Q7fwonAWgFl c".to_string()),
        Just("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQ== short".to_string()),
        Just("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAA3W05+gRBgnqvpB+K8edFacp+V8Zn7Q7fwonAWgFl\nssh-ed25519 AAAA".to_string()),
        Just(format!("ssh-ed25519 {}", "A".repeat(20_000))),
    ]
    .prop_map(|k| json!({"key": k}));
    // A session's size, figures of every sign and size. Not `disk_mib`:
    // the fuzz session has no disk, whose size this server would then
    // answer it cannot change (501).
    let figure = || {
        prop_oneof![
            3 => (0u64..5000).prop_map(|n| json!(n)),
            1 => prop::sample::select(vec![
                json!(-1), json!(0.5), json!(12.5), json!(1e300), json!(-1e300), json!(u64::MAX),
                json!(i64::MIN), json!("64"), json!(null), json!([1]),
            ]),
        ]
    };
    let resources = prop::collection::btree_map(
        prop::sample::select(vec![
            "cpus",
            "memory_mib",
            "pids",
            "run_timeout_secs",
            "idle_timeout_secs",
        ]),
        figure(),
        0..5,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    // A session's recording switch: booleans and what is not one.
    let switch = prop_oneof![
        any::<bool>().prop_map(|b| json!({"enabled": b})),
        json_value().prop_map(|v| json!({"enabled": v})),
        Just(json!({})),
        Just(json!({"enabled": true, "record_input": true})),
    ];
    let on = |routes: &'static [(&'static str, &'static str)]| prop::sample::select(routes);
    prop_oneof![
        (on(&ROUTES[0..2]), run()),
        (on(&ROUTES[3..4]), run()),
        (on(&ROUTES[2..3]), open),
        (on(&ROUTES[4..5]), spawn),
        (on(&ROUTES[5..7]), key),
        (on(&ROUTES[7..9]), resources),
        (on(&ROUTES[9..11]), switch),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        8 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/json; charset=utf-8")),
    ]
}

#[test]
fn bodies_through_the_router() {
    let env = Env::new();
    run("arbitrary bytes", 300, |r| {
        r.run(
            &(
                route(),
                content_type(),
                prop::collection::vec(any::<u8>(), 0..512),
            ),
            |((method, path), ct, body)| env.check(method, path, ct, body),
        )
        .map_err(|e| e.to_string())
    });
    run("arbitrary JSON", 300, |r| {
        r.run(&(route(), json_value()), |((method, path), v)| {
            env.check(
                method,
                path,
                Some("application/json"),
                serde_json::to_vec(&v).unwrap(),
            )
        })
        .map_err(|e| e.to_string())
    });
    run("structured bodies", 600, |r| {
        r.run(&structured_body(), |((method, path), v)| {
            env.check(
                method,
                path,
                Some("application/json"),
                serde_json::to_vec(&v).unwrap(),
            )
        })
        .map_err(|e| e.to_string())
    });
    run("oversized bodies", 10, |r| {
        r.run(
            &(route(), MAX_BODY + 1..MAX_BODY * 4),
            |((method, path), n)| {
                let body = format!("{{\"key\":\"{}\"}}", "x".repeat(n));
                env.check(method, path, Some("application/json"), body.into_bytes())
            },
        )
        .map_err(|e| e.to_string())
    });
    run("path segments", 300, |r| {
        r.run(
            &(
                prop::sample::select(vec![
                    ("GET", "/api/sessions/{}"),
                    ("GET", "/api/runs/{}"),
                    ("GET", "/api/sessions/{}/executions"),
                    ("GET", "/api/sessions/{}/keys"),
                    ("DELETE", "/api/sessions/fuzz/keys/{}"),
                    ("POST", "/api/sessions/{}/stop"),
                    ("GET", "/api/sessions/{}?force=maybe"),
                    ("GET", "/api/sessions/{}/recordings"),
                    ("GET", "/api/sessions/fuzz/recordings/{}"),
                    ("DELETE", "/api/sessions/fuzz/recordings/{}"),
                    ("GET", "/api/sessions/{}/recording"),
                ]),
                "\\PC{0,80}",
            ),
            |((method, template), segment)| {
                if segment == SESSION {
                    return Ok(());
                }
                let enc: String = segment
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                env.check(method, &template.replace("{}", &enc), None, Vec::new())
            },
        )
        .map_err(|e| e.to_string())
    });
}

/// The body types alone, from arbitrary bytes: clean errors, no panic.
#[test]
fn body_types_deserialize_cleanly() {
    run("body types", 2000, |r| {
        r.run(&prop::collection::vec(any::<u8>(), 0..256), |b| {
            let _ = serde_json::from_slice::<super::runs::RunRequest>(&b);
            let _ = serde_json::from_slice::<super::sessions::OpenRequest>(&b);
            let _ = serde_json::from_slice::<super::spawn::SpawnRequest>(&b);
            let _ = serde_json::from_slice::<super::keys::AddKeyRequest>(&b);
            let _ = serde_json::from_slice::<super::recordings::SwitchRequest>(&b);
            Ok(())
        })
        .map_err(|e| e.to_string())
    });
}

/// What `rest::start` and `RestServer::shutdown` build from a `[rest]`
/// table that validated: the run queue, the attachment permits and the
/// shutdown deadline.
pub(crate) fn check_rest_config_usable(config: &RestConfig) -> Result<(), TestCaseError> {
    let runs = RunRegistry::new(
        config.max_concurrent_runs,
        config.max_queued_runs,
        config.max_queued_runs_per_session,
        config.max_runs_kept,
    );
    let _ = tokio::sync::Semaphore::new(config.max_attachments);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(runs.drain(config.shutdown_grace()));
    Ok(())
}

/// `BLINK_BIND` / `--http-listen` values.
#[test]
fn listen_addresses() {
    run("listen addresses", 2000, |r| {
        r.run(&"\\PC{0,40}|[0-9.:\\[\\]a-f]{0,30}", |s| {
            match super::config::parse_listen(&s) {
                Ok(addr) => {
                    prop_assert_eq!(super::config::parse_listen(&addr.to_string()), Ok(addr))
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
    });
}
