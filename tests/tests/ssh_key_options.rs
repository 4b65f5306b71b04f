//! authorized_keys options end to end: keys added with options through
//! `blink-cli` (and the admin file), enforced against OpenSSH's `ssh` and
//! `sftp`. Every connection goes to 127.0.0.1.

use std::process::Output;

use blink_e2e::ssh::{Client, write_file};
use blink_e2e::{Blink, Server, run, texts};

/// Authorize the client's `id` key for `s1` with these options in front
/// (they replace any the key had).
fn authorize(blink: &Blink, client: &Client, options: &str) -> Output {
    let line = format!("{options} {}", client.public_key("id"));
    let mut cmd = blink.cli(&["session", "keys", "add", "--name", "s1", "-"]);
    run(&mut cmd, line.as_bytes())
}

fn authorize_ok(blink: &Blink, client: &Client, options: &str) {
    let out = authorize(blink, client, options);
    assert!(out.status.success(), "{options}: {}", texts(&out).1);
}

fn ssh(client: &Client, server: &Server, args: &[&str]) -> Output {
    run(client.ssh(server, "id", "s1").args(args), b"")
}

fn sftp_pwd(client: &Client, server: &Server) -> Output {
    client.sftp(server, &[], "s1", "pwd\n")
}

/// Real sandboxes, a session `s1` that no key reaches yet, and a client.
fn fixture() -> Option<(Blink, Client)> {
    let blink = Blink::with_runtime()?;
    blink.ok(&["session", "open", "--name", "s1"]);
    Some((blink, Client::new()))
}

fn refused(out: &Output) -> bool {
    out.status.code() == Some(255) && texts(out).1.contains("Permission denied")
}

#[test]
fn from_and_expiry_time_decide_who_logs_in() {
    let Some((blink, client)) = fixture() else {
        return;
    };
    let server = blink.server().start();

    // The client is at 127.0.0.1: a key for 10/8 only is refused.
    authorize_ok(&blink, &client, r#"from="10.0.0.0/8""#);
    let out = ssh(&client, &server, &["echo in"]);
    assert!(refused(&out), "{:?}", texts(&out));
    authorize_ok(&blink, &client, r#"from="!127.0.0.1,*""#);
    assert!(refused(&ssh(&client, &server, &["echo in"])));
    for allowed in [
        r#"from="127.0.0.1""#,
        r#"from="10.0.0.0/8,127.0.0.0/8""#,
        r#"from="127.0.0.?""#,
    ] {
        authorize_ok(&blink, &client, allowed);
        let out = ssh(&client, &server, &["echo in"]);
        assert_eq!(texts(&out).0, "in\n", "{allowed}: {}", texts(&out).1);
    }

    // An expired key is refused; one that expires later is not.
    authorize_ok(&blink, &client, r#"expiry-time="20200101Z""#);
    let out = ssh(&client, &server, &["echo in"]);
    assert!(refused(&out), "{:?}", texts(&out));
    authorize_ok(&blink, &client, r#"expiry-time="29990101""#);
    assert_eq!(texts(&ssh(&client, &server, &["echo in"])).0, "in\n");
}

#[test]
fn forced_command_pty_and_restrict() {
    let Some((blink, client)) = fixture() else {
        return;
    };
    let server = blink.server().start();

    // command=: whatever the client asks, the forced command runs, and
    // sees the client's command in SSH_ORIGINAL_COMMAND.
    authorize_ok(
        &blink,
        &client,
        r#"command="echo forced; echo \"original=${SSH_ORIGINAL_COMMAND-unset}\"""#,
    );
    let out = ssh(&client, &server, &["echo asked; exit 3"]);
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    assert_eq!(texts(&out).0, "forced\noriginal=echo asked; exit 3\n");
    // A shell runs it too, without SSH_ORIGINAL_COMMAND.
    let out = run(
        client.ssh(&server, "id", "s1").arg("-T"),
        b"echo from-stdin\n",
    );
    assert_eq!(texts(&out).0, "forced\noriginal=unset\n");
    // So does sftp: refused.
    let out = sftp_pwd(&client, &server);
    assert!(!out.status.success(), "{:?}", texts(&out));
    // Except under command="internal-sftp", which serves sftp only.
    authorize_ok(&blink, &client, r#"command="internal-sftp""#);
    let out = sftp_pwd(&client, &server);
    assert!(out.status.success(), "{:?}", texts(&out));
    let out = ssh(&client, &server, &["echo shell"]);
    assert_ne!(texts(&out).0, "shell\n");
    assert_ne!(out.status.code(), Some(0));

    // no-pty: the terminal is refused, which `ssh -tt` treats as fatal;
    // without one the command runs.
    authorize_ok(&blink, &client, "no-pty");
    let out = ssh(&client, &server, &["-tt", "tty"]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(255), "{stdout} {stderr}");
    assert!(stderr.contains("PTY allocation request failed"), "{stderr}");
    assert!(!stdout.contains("/dev/pts/"), "{stdout}");
    let out = ssh(&client, &server, &["tty"]);
    assert_eq!(texts(&out).0, "not a tty\n");

    // restrict: no terminal, no forwarding; commands run.
    authorize_ok(&blink, &client, "restrict");
    let out = ssh(&client, &server, &["-tt", "tty"]);
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    assert!(texts(&out).1.contains("PTY allocation request failed"));
    let out = ssh(&client, &server, &["-W", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(255));
    let out = ssh(&client, &server, &["echo restricted"]);
    assert_eq!(texts(&out).0, "restricted\n");
    // restrict,pty gives the terminal back.
    authorize_ok(&blink, &client, "restrict,pty");
    let out = ssh(&client, &server, &["-tt", "tty"]);
    assert!(texts(&out).0.contains("/dev/pts/"), "{:?}", texts(&out));

    // environment= is set in what the key runs.
    authorize_ok(&blink, &client, r#"environment="GREETING=hello, there""#);
    let out = ssh(&client, &server, &["echo \"$GREETING\""]);
    assert_eq!(texts(&out).0, "hello, there\n");
}

#[test]
fn options_that_cannot_be_enforced_are_refused() {
    let blink = Blink::new();
    let client = Client::new();
    blink.ok(&["session", "open", "--name", "s1"]);
    for (options, named) in [
        ("frobnicate", "\"frobnicate\""),
        (r#"no-pty,permitopen="127.0.0.1""#, "\"permitopen\""),
        (r#"tunnel="1""#, "\"tunnel\""),
        ("cert-authority", "\"cert-authority\""),
    ] {
        let out = authorize(&blink, &client, options);
        let (_, stderr) = texts(&out);
        assert!(!out.status.success(), "{options} was accepted");
        assert!(
            stderr.starts_with("blink-cli: ") && stderr.contains(named),
            "{options}: {stderr}"
        );
    }
    // Nothing was stored.
    let listed = blink.ok(&["session", "keys", "ls", "--name", "s1"]);
    assert!(listed.is_empty(), "{listed}");
    // What is stored is listed with its options.
    authorize_ok(&blink, &client, r#"no-pty,from="127.0.0.1""#);
    let listed = blink.ok(&["session", "keys", "ls", "--name", "s1"]);
    assert!(
        listed.trim_end().ends_with(r#"[no-pty,from="127.0.0.1"]"#),
        "{listed}"
    );
}

#[test]
fn admin_key_options_are_enforced() {
    let Some((blink, client)) = fixture() else {
        return;
    };
    let public = client.public_key("id");
    let other = client.public_key("other");
    let admin = client.path("admin_keys");
    // `id` only from 10/8; `other` with an option Blink cannot enforce,
    // so its line is skipped, not used without it.
    write_file(
        &admin,
        &format!("from=\"10.0.0.0/8\" {public}\ntunnel=\"1\" {other}\n"),
    );
    let server = blink
        .server()
        .config(&format!(
            "[ssh]\nadmin_authorized_keys = {:?}\n",
            admin.display()
        ))
        .start();
    assert!(refused(&ssh(&client, &server, &["true"])));
    let out = run(client.ssh(&server, "other", "s1").arg("true"), b"");
    assert!(refused(&out));

    write_file(
        &admin,
        &format!("from=\"127.0.0.1\",command=\"echo admin-forced\" {public}\n"),
    );
    let out = ssh(&client, &server, &["echo asked"]);
    assert_eq!(texts(&out).0, "admin-forced\n", "{}", texts(&out).1);
}
