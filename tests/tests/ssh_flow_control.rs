//! Flow control with the real OpenSSH client: a program that reads its
//! stdin late, or slowly, gets all of it. The client is held back by the
//! channel's window (patches/russh: windows follow consumption) instead of
//! the program being killed, and other channels on the same connection keep
//! working meanwhile.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blink_e2e::run_with;
use blink_e2e::ssh::SshFixture;
use sha2::{Digest, Sha256};

const GIB: usize = 1 << 30;

/// Run `command` over SSH with `len` pseudo-random bytes on its stdin,
/// streamed (never held whole); returns its stdout, exit status and the
/// input's SHA-256.
fn feed(
    f: &SshFixture,
    extra: &[&str],
    command: &str,
    len: usize,
) -> (String, Option<i32>, String) {
    let (out, digest) = run_with(f.ssh_command().args(extra).arg(command), |mut stdin| {
        let mut hasher = Sha256::new();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut chunk = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            for word in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
            }
            let n = left.min(chunk.len());
            hasher.update(&chunk[..n]);
            if stdin.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
        drop(stdin);
        hex::encode(hasher.finalize())
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("killed"),
        "the program was killed: {stderr}"
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
        digest,
    )
}

#[test]
fn a_program_that_reads_late_gets_a_gibibyte_whole() {
    let Some(f) = SshFixture::new() else { return };
    let (stdout, status, digest) = feed(&f, &[], "sleep 10; sha256sum", GIB);
    assert_eq!(status, Some(0), "{stdout}");
    assert_eq!(stdout.split_whitespace().next(), Some(digest.as_str()));
}

#[test]
fn a_gibibyte_through_cat_into_a_file_is_byte_exact() {
    let Some(f) = SshFixture::new() else { return };
    let (stdout, status, digest) = feed(
        &f,
        &[],
        "cat > /root/big && sha256sum /root/big && rm /root/big",
        GIB,
    );
    assert_eq!(status, Some(0), "{stdout}");
    assert_eq!(stdout.split_whitespace().next(), Some(digest.as_str()));
}

/// One connection (OpenSSH connection sharing), two channels: while the
/// first channel's program does not read, the second runs to completion.
#[test]
fn a_stalled_channel_does_not_stall_its_connection() {
    let Some(f) = SshFixture::new() else { return };
    let control = f.client.path("ctl");
    let share = [
        "-o".to_string(),
        format!("ControlPath={}", control.display()),
    ];
    let mut master = f.ssh_command();
    master
        .args(&share)
        .args(["-o", "ControlMaster=yes", "-N"])
        .stdin(Stdio::null());
    let mut master = master.spawn().expect("master");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(control.exists(), "the shared connection came up");
    let share_ref: Vec<&str> = share.iter().map(String::as_str).collect();

    let stalled = std::thread::scope(|scope| {
        let first = scope.spawn(|| feed(&f, &share_ref, "sleep 8; sha256sum", 256 << 20));
        // Let the first channel fill its window, then use the connection.
        std::thread::sleep(Duration::from_secs(2));
        let out = f
            .ssh_command()
            .args(&share_ref)
            .arg("echo alive")
            .output()
            .expect("second channel");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alive");
        let first_still_running = !first.is_finished();
        let (stdout, status, digest) = first.join().expect("first");
        assert_eq!(status, Some(0), "{stdout}");
        assert_eq!(stdout.split_whitespace().next(), Some(digest.as_str()));
        first_still_running
    });
    assert!(
        stalled,
        "the second channel finished while the first was still held back"
    );
    let _ = Command::new("ssh")
        .args(["-S", &control.display().to_string(), "-O", "exit", "x"])
        .output();
    let _ = master.kill();
    let _ = master.wait();
}
