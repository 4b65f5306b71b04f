//! A cluster's deployment files (deploy/cluster/, docs/SCALE.md): the
//! Kubernetes manifests are valid objects of their kinds (strict, against
//! the API's published schemas, by `kubernetes-validate` from PyPI) and
//! hang together (every mount names a volume, every ConfigMap key and
//! claim exists, each config file is mounted where its flag says and every
//! path it names lies on a mount); each config, Kubernetes' and systemd's,
//! passes `blink-server --check-config` for its role; the systemd units
//! verify and let the server write the directories its config names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use blink_e2e::{bin, units};
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/cluster")
        .join(rel)
}

const MANIFESTS: [&str; 4] = ["config.yaml", "etcd.yaml", "nodes.yaml", "routers.yaml"];

/// Whether `kubernetes-validate` (and PyYAML, which it brings) is here.
fn validator_here() -> bool {
    let here = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    blink_sdk::testing::require(here, "kubernetes-validate (pip; scripts/install-deps.sh)")
}

/// Run `command`: its success, and stdout then stderr.
fn outcome(command: &mut Command) -> (bool, String) {
    let out = command.output().expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `kubernetes-validate --strict` on `files`: success and its output.
fn validate(files: &[PathBuf]) -> (bool, String) {
    outcome(
        Command::new("kubernetes-validate")
            .args(["--strict", "-k", "1.30.0"])
            .args(files),
    )
}

/// Every document of every manifest, as JSON (PyYAML reads the YAML).
fn documents() -> Vec<Value> {
    let files: Vec<String> = MANIFESTS
        .iter()
        .map(|f| deploy(&format!("kubernetes/{f}")).display().to_string())
        .collect();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))",
        ])
        .args(&files)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn strs(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// `blink-server --check-config` on `config` for `role`: success, output.
fn check_config(config: &Path, role: &str) -> (bool, String) {
    outcome(
        Command::new(bin("blink-server"))
            .args(["--check-config", "--role", role, "--config"])
            .arg(config)
            .env_remove("BLINK_API_TOKEN"),
    )
}

/// The `key = "/path"` settings of a TOML text that name absolute paths.
fn paths_in(toml_text: &str) -> BTreeMap<String, String> {
    let table: toml::Table = toml_text.parse().expect("TOML");
    let mut out = BTreeMap::new();
    fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (k, v) in t {
            match v {
                toml::Value::String(s) if s.starts_with('/') => {
                    out.insert(format!("{prefix}{k}"), s.clone());
                }
                toml::Value::Table(t) => walk(&format!("{prefix}{k}."), t, out),
                _ => {}
            }
        }
    }
    walk("", &table, &mut out);
    out
}

#[test]
fn the_kubernetes_manifests_are_valid_objects_of_their_kinds() {
    if !validator_here() {
        return;
    }
    let files: Vec<PathBuf> = MANIFESTS
        .iter()
        .map(|f| deploy(&format!("kubernetes/{f}")))
        .collect();
    let (ok, text) = validate(&files);
    assert!(ok, "{text}");
    // Seven objects, each checked (not skipped as an unknown kind).
    assert_eq!(text.matches(" passed for resource ").count(), 7, "{text}");
    // The check is strict: a misspelt field fails, named.
    let here = tempfile::tempdir().expect("tempdir");
    let broken = here.path().join("nodes.yaml");
    let nodes = std::fs::read_to_string(&files[2]).expect("nodes.yaml");
    std::fs::write(
        &broken,
        nodes.replace("privileged: true", "privilegd: true"),
    )
    .expect("write");
    let (ok, text) = validate(&[broken]);
    assert!(!ok, "a misspelt field passed: {text}");
    assert!(text.contains("privilegd"), "{text}");
}

#[test]
fn the_kubernetes_manifests_hang_together_and_their_configs_check_out() {
    if !validator_here() {
        return;
    }
    let docs = documents();
    let config = named(&docs, "ConfigMap", "blink-config").expect("the ConfigMap");
    let mut checked = 0;
    for (kind, name, role) in [
        ("DaemonSet", "blink-node", "node"),
        ("Deployment", "blink-router", "router"),
    ] {
        let workload = named(&docs, kind, name).unwrap_or_else(|| panic!("{kind} {name}"));
        let pod = &workload["spec"]["template"]["spec"];
        let volumes: BTreeMap<&str, &Value> = strs(&pod["volumes"])
            .map(|v| (v["name"].as_str().expect("volume name"), v))
            .collect();
        let container = &pod["containers"][0];
        let mut mounted: Vec<(String, String)> = Vec::new();
        for mount in strs(&container["volumeMounts"]) {
            let (vol, at) = (
                mount["name"].as_str().expect("mount name"),
                mount["mountPath"].as_str().expect("mountPath"),
            );
            let volume = volumes
                .get(vol)
                .unwrap_or_else(|| panic!("{name}: mount {vol} names no volume"));
            if let Some(map) = volume["configMap"]["name"].as_str() {
                let map = named(&docs, "ConfigMap", map)
                    .unwrap_or_else(|| panic!("{name}: no ConfigMap {map}"));
                if let Some(key) = mount["subPath"].as_str() {
                    assert!(
                        map["data"][key].is_string(),
                        "{name}: the ConfigMap has no {key}"
                    );
                }
            }
            if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                assert!(
                    named(&docs, "PersistentVolumeClaim", claim).is_some(),
                    "{name}: no claim {claim}"
                );
            }
            mounted.push((vol.to_owned(), at.to_owned()));
        }
        // The config file its flag names is a key of the ConfigMap mounted
        // right there.
        let flag = strs(&container["args"])
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--config="))
            .unwrap_or_else(|| panic!("{name}: no --config="));
        let file = Path::new(flag)
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        assert!(
            mounted.iter().any(|(_, at)| at == flag),
            "{name}: {flag} is not mounted"
        );
        let text = config["data"][&file]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no {file}"));
        let here = tempfile::tempdir().expect("tempdir");
        let copy = here.path().join(&file);
        std::fs::write(&copy, text).expect("write");
        let (ok, out) = check_config(&copy, role);
        assert!(ok, "{file} as {role}: {out}");
        // Every path the config names lies on one of the pod's mounts.
        for (key, path) in paths_in(text) {
            let on_mount = mounted
                .iter()
                .any(|(_, at)| Path::new(&path).starts_with(at) || path == *at);
            assert!(on_mount, "{name}: {file}'s {key} = {path} is on no mount");
            checked += 1;
        }
        // A node with automatic exports shares the routers' claim.
        if text.contains("export_on_stop = true") {
            let exports = mounted
                .iter()
                .find(|(_, at)| at == "/srv/blink-exports")
                .expect("the export directory is mounted");
            assert_eq!(
                volumes[exports.0.as_str()]["persistentVolumeClaim"]["claimName"],
                "blink-exports"
            );
        }
    }
    assert!(checked >= 5, "only {checked} paths checked");
    // Every key of the Secret the pods read is one the README makes.
    let readme = std::fs::read_to_string(deploy("kubernetes/README.md")).expect("README");
    let mut keys = Vec::new();
    collect_secret_keys(&serde_json::Value::Array(docs.clone()), &mut keys);
    assert!(keys.len() >= 3, "{keys:?}");
    for key in keys {
        assert!(
            readme.contains(&format!("--from-file={key}"))
                || readme.contains(&format!("--from-literal={key}=")),
            "the README's Secret lacks {key}"
        );
    }
}

/// Keys of the `blink-keys` Secret named anywhere under `v`.
fn collect_secret_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if map.get("name").and_then(Value::as_str) == Some("blink-keys")
                && let Some(key) = map.get("key").and_then(Value::as_str)
            {
                out.push(key.to_owned());
            }
            if map.get("secretName").and_then(Value::as_str) == Some("blink-keys") {
                for item in strs(&map["items"]) {
                    out.push(item["key"].as_str().expect("item key").to_owned());
                }
            }
            map.values().for_each(|v| collect_secret_keys(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_secret_keys(v, out)),
        _ => {}
    }
}

#[test]
fn the_systemd_layout_verifies_and_its_configs_check_out() {
    let tool = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !blink_sdk::testing::require(tool, "systemd-analyze is not installed") {
        return;
    }
    let (ok, out) = check_config(&deploy("systemd/node.toml"), "node");
    assert!(ok, "{out}");
    let (ok, out) = check_config(&deploy("systemd/router.toml"), "router");
    assert!(ok, "{out}");
    // The wrong role's config is refused, naming the setting.
    let (ok, out) = check_config(&deploy("systemd/router.toml"), "node");
    assert!(!ok && out.contains("router_key"), "{out}");

    // The router's unit, and the node's unit with its exports drop-in,
    // verify as installed.
    let here = tempfile::tempdir().expect("tempdir");
    let router = units::install(&deploy("systemd/blink-router.service"), here.path());
    let node = units::install(&deploy("../blink-server.service"), here.path());
    let dropin = here.path().join("blink-server.service.d");
    std::fs::create_dir(&dropin).expect("mkdir");
    std::fs::copy(
        deploy("systemd/blink-server.service.d/exports.conf"),
        dropin.join("exports.conf"),
    )
    .expect("copy");
    units::verify(&router);
    units::verify(&node);
    // What each unit may write covers the export directory its config
    // names (ProtectSystem=strict makes everything else read-only).
    let writable = |texts: &[String]| -> Vec<String> {
        texts
            .iter()
            .flat_map(|t| t.lines())
            .filter_map(|l| l.strip_prefix("ReadWritePaths="))
            .flat_map(|l| l.split_whitespace())
            .map(|p| p.trim_start_matches('-').to_owned())
            .collect()
    };
    let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
    for (config, unit_texts) in [
        (
            "systemd/node.toml",
            vec![
                read(deploy("../blink-server.service")),
                read(deploy("systemd/blink-server.service.d/exports.conf")),
            ],
        ),
        (
            "systemd/router.toml",
            vec![read(deploy("systemd/blink-router.service"))],
        ),
    ] {
        let paths = paths_in(&read(deploy(config)));
        let dir = paths
            .get("cluster.export_dir")
            .unwrap_or_else(|| panic!("{config} names no export_dir"));
        let may = writable(&unit_texts);
        assert!(
            may.iter().any(|w| Path::new(dir).starts_with(w)),
            "{config}: export_dir {dir} is not among {may:?}"
        );
    }
}

/// The seconds a node's shutdown may take by its config: the SSH drain,
/// then (with `export_on_stop`) its last exports, plus 30 s to stop its
/// sandboxes and leave.
fn shutdown_budget(config: &str) -> u64 {
    let t: toml::Table = toml::from_str(config).expect("a node config");
    let int = |table: &str, key: &str, default: i64| {
        t.get(table)
            .and_then(|v| v.get(key))
            .and_then(toml::Value::as_integer)
            .unwrap_or(default)
    };
    let exports = t
        .get("cluster")
        .and_then(|c| c.get("export_on_stop"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    let grace = int("ssh", "shutdown_grace_secs", 10);
    let export = if exports {
        int("cluster", "shutdown_export_secs", 60)
    } else {
        0
    };
    u64::try_from(grace + export + 30).expect("positive")
}

/// A node's process manager waits long enough for its shutdown (its last
/// exports included, docs/SCALE.md) before it kills it: Kubernetes'
/// grace period, systemd's stop timeout (the drop-in's, which comes last).
#[test]
fn nodes_are_given_the_time_their_shutdown_exports_need() {
    let docs = documents();
    let config = named(&docs, "ConfigMap", "blink-config").expect("the ConfigMap");
    let node = config["data"]["node.toml"].as_str().expect("node.toml");
    let budget = shutdown_budget(node);
    assert!(budget >= 100, "export_on_stop is on: {budget}");
    let pod =
        &named(&docs, "DaemonSet", "blink-node").expect("DaemonSet")["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    assert!(
        grace >= budget,
        "terminationGracePeriodSeconds {grace} < {budget}"
    );

    let node = std::fs::read_to_string(deploy("systemd/node.toml")).expect("node.toml");
    let budget = shutdown_budget(&node);
    let timeout = [
        deploy("../blink-server.service"),
        deploy("systemd/blink-server.service.d/exports.conf"),
    ]
    .iter()
    .flat_map(|p| {
        std::fs::read_to_string(p)
            .expect("unit")
            .lines()
            .filter_map(|l| l.strip_prefix("TimeoutStopSec="))
            .map(|v| v.trim().parse::<u64>().expect("seconds"))
            .collect::<Vec<_>>()
    })
    .last()
    .expect("a TimeoutStopSec");
    assert!(timeout >= budget, "TimeoutStopSec {timeout} < {budget}");
}
