//! Runtime selection (docs/BOXLITE.md) against the real binaries, on any
//! host: `auto` picks local where the boxlite preflight fails and says why
//! in the startup log, `/api/health`, `/api/product` and `blink-cli
//! doctor`; `runtime = "boxlite"` where it cannot work, or an unknown
//! runtime, stops blink-server at startup with a message naming the cause.
//! No test here boots a VM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blink_e2e::{Blink, bin};

/// What the preflight must name on this host: `kvm_pvm` where that module
/// is loaded, else whatever fails first; the missing feature in any build
/// without it.
fn expected_cause() -> &'static str {
    if Path::new("/sys/module/kvm_pvm").exists() {
        "kvm_pvm: PVM cannot boot micro-VM guests"
    } else {
        "boxlite"
    }
}

#[test]
fn auto_falls_back_to_local_and_says_why_everywhere() {
    let blink = Blink::new();
    let server = blink.server().log_filter("info").start();
    let cause = expected_cause();

    let log = server
        .wait_log(&["runtime selected"])
        .expect("the startup log names the runtime");
    let line = log
        .lines()
        .find(|l| l.contains("runtime selected"))
        .unwrap();
    assert!(
        line.contains("runtime=local") && line.contains(cause),
        "{line}"
    );

    let health = server.get("/api/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.body["runtime"], "local");
    let reason = health.body["runtime_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("auto: boxlite is not usable here"),
        "{reason}"
    );
    assert!(reason.contains(cause), "{reason}");

    let product = server.get("/api/product");
    assert_eq!(product.status, 200);
    let selection = &product.body["runtime_selection"];
    assert_eq!(selection["requested"], "auto", "{selection}");
    assert_eq!(selection["runtime"], "local", "{selection}");
    assert_eq!(selection["reason"], reason);
    let boxlite = &product.body["runtimes"]["boxlite"];
    // What boxlite maps and what it does not, said per operation.
    assert_eq!(boxlite["operations"]["exec"], true, "{boxlite}");
    assert_eq!(boxlite["operations"]["byte_exact_io"], true, "{boxlite}");
    assert_eq!(boxlite["operations"]["export"], false, "{boxlite}");
    assert_eq!(boxlite["operations"]["resources"], false, "{boxlite}");
    assert!(
        boxlite["note"]
            .as_str()
            .unwrap()
            .contains("export and import are not mapped"),
        "{boxlite}"
    );
    assert_eq!(
        product.body["runtimes"]["local"]["operations"]["exec"],
        true
    );
}

#[test]
fn doctor_says_which_runtime_and_why() {
    let blink = Blink::new();
    let cause = expected_cause();
    let (_, report) = blink.json(&["doctor"]);
    let runtimes = report["runtimes"]
        .as_array()
        .expect("one entry per runtime");
    assert_eq!(report["path"]["kind"], "direct", "{report}");
    let selected: Vec<_> = runtimes.iter().filter(|r| r["selected"] == true).collect();
    assert_eq!(selected.len(), 1, "{report}");
    assert_eq!(selected[0]["runtime"], "local");
    let reason = selected[0]["reason"].as_str().unwrap();
    assert!(reason.contains(cause), "{reason}");
    let boxlite = runtimes.iter().find(|r| r["runtime"] == "boxlite").unwrap();
    assert_eq!(boxlite["usable"], false, "{boxlite}");

    // Asked for boxlite: nothing is selected, the cause is named, exit 1.
    let (code, report) = blink.json(&["--runtime", "boxlite", "doctor"]);
    assert_eq!(code, Some(1), "{report}");
    for r in report["runtimes"].as_array().unwrap() {
        assert_eq!(r["selected"], false, "{r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("runtime boxlite is not usable here"),
            "{reason}"
        );
        assert!(reason.contains(cause), "{reason}");
    }
}

/// Start blink-server with `config` and `args` and expect it to exit on
/// its own within a bound; its exit code and stderr.
fn server_exits(blink: &Blink, config: &str, args: &[&str]) -> (Option<i32>, String) {
    let path = blink.data_dir.path().join("blink.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(bin("blink-server"))
        .arg("--data-dir")
        .arg(blink.data_dir.path())
        .arg("--config")
        .arg(&path)
        .args([
            "--ssh-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env_remove("BLINK_RUNTIME")
        .env_remove("BLINK_CONFIG")
        .env_remove("BLINK_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn blink-server");
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("blink-server kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn boxlite_where_it_cannot_work_stops_the_server_naming_the_cause() {
    let cause = expected_cause();
    for (config, args) in [
        ("[sandbox]\nruntime = \"boxlite\"\n", &[][..]),
        ("runtime = \"boxlite\"\n", &[][..]),
        ("", &["--runtime", "boxlite"][..]),
    ] {
        let blink = Blink::new();
        let (code, stderr) = server_exits(&blink, config, args);
        assert!(code.is_some_and(|c| c != 0), "{code:?} {stderr}");
        assert!(
            stderr.contains("runtime boxlite is not usable here") && stderr.contains(cause),
            "{config} {args:?}: {stderr}"
        );
    }
}

#[test]
fn an_unknown_runtime_is_named() {
    let blink = Blink::new();
    let (code, stderr) = server_exits(&blink, "[sandbox]\nruntime = \"qemu\"\n", &[]);
    assert!(code.is_some_and(|c| c != 0), "{stderr}");
    assert!(
        stderr.contains("\"qemu\"") && stderr.contains("auto, boxlite or local"),
        "{stderr}"
    );
    let (code, stderr) = server_exits(&blink, "", &["--runtime", "qemu"]);
    assert!(code.is_some_and(|c| c != 0), "{stderr}");
    assert!(stderr.contains("qemu"), "{stderr}");
}
