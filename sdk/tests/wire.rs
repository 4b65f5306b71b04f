//! The exec wire end to end: the real `blink-guest wire` run as a host
//! process, driven by the SDK's host half. The channel between them is
//! what BoxLite gives (bytes in, text out in arbitrary chunks, buffered
//! without bound), so these tests hold for the boxlite runtime without a
//! VM; tests/vm/ runs the same wrapper inside a real micro-VM.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use blink_sdk::runtime::exec::PtySize;
use blink_sdk::runtime::wire::{self, WireInput, WireProcess};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod guest_process;
use guest_process::{guest, run, spec};

async fn read_all(r: &mut Option<blink_sdk::runtime::exec::ByteReader>) -> Vec<u8> {
    let mut out = Vec::new();
    r.as_mut().unwrap().read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn sixteen_mib_of_random_bytes_go_through_both_ways_exactly() {
    let g = guest();
    let mut data = vec![0u8; 16 << 20];
    rand::rng().fill_bytes(&mut data);
    let mut ex = run(&g, spec(&["cat"]), Arc::default()).await;
    let mut stdin = ex.stdin.take().unwrap();
    let input = data.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&input).await.unwrap();
        stdin.shutdown().await.unwrap();
    });
    let out = read_all(&mut ex.stdout).await;
    writer.await.unwrap();
    assert_eq!(out.len(), data.len());
    assert!(out == data, "the bytes differ");
    assert_eq!(ex.control.wait().await.unwrap().code, 0);
}

#[tokio::test]
async fn stderr_exit_codes_and_the_environment_arrive_apart() {
    let g = guest();
    let mut s = spec(&["sh", "-c", "env; printf '\\377\\000err' >&2; exit 7"]);
    s.env.push(("SECRET_KEY".into(), "v=1 2".into()));
    let mut ex = run(&g, s, Arc::default()).await;
    let (out, err) = tokio::join!(read_all(&mut ex.stdout), async {
        let mut e = Vec::new();
        ex.stderr
            .as_mut()
            .unwrap()
            .read_to_end(&mut e)
            .await
            .unwrap();
        e
    });
    let out = String::from_utf8(out).unwrap();
    let mut vars: Vec<&str> = out.lines().filter(|l| !l.starts_with("PWD=")).collect();
    vars.sort();
    assert_eq!(vars, ["PATH=/usr/bin:/bin", "SECRET_KEY=v=1 2"]);
    assert_eq!(err, b"\xff\0err");
    assert_eq!(ex.control.wait().await.unwrap().code, 7);
}

#[tokio::test]
async fn a_missing_program_is_127_and_signals_reach_the_program() {
    let g = guest();
    let mut ex = run(&g, spec(&["/no/such/program"]), Arc::default()).await;
    let err = {
        let mut e = Vec::new();
        ex.stderr
            .as_mut()
            .unwrap()
            .read_to_end(&mut e)
            .await
            .unwrap();
        String::from_utf8(e).unwrap()
    };
    assert!(err.contains("cannot run /no/such/program"), "{err}");
    assert_eq!(ex.control.wait().await.unwrap().code, 127);

    let ex = run(&g, spec(&["sleep", "30"]), Arc::default()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ex.control.signal(15).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), ex.control.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status.code, status.signal), (143, Some(15)));
}

/// The regression the local runtime had: a program that reads its stdin
/// late gets all of it, and a wire that waits is not killed.
#[tokio::test]
async fn a_program_that_reads_stdin_late_gets_all_of_it() {
    let g = guest();
    let mut ex = run(&g, spec(&["sh", "-c", "sleep 1; wc -c"]), Arc::default()).await;
    let mut stdin = ex.stdin.take().unwrap();
    stdin.write_all(&vec![b'x'; 3 << 20]).await.unwrap();
    stdin.shutdown().await.unwrap();
    let out = read_all(&mut ex.stdout).await;
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        (3 << 20).to_string()
    );
    assert_eq!(ex.control.wait().await.unwrap().code, 0);
}

/// A reader that takes nothing holds the program: what crossed the wire
/// stays within the window, not the 64 MiB the program writes.
#[tokio::test]
async fn a_slow_reader_holds_the_program_within_the_window() {
    let g = guest();
    let pulled = Arc::new(AtomicU64::new(0));
    let mut ex = run(
        &g,
        spec(&["head", "-c", "67108864", "/dev/zero"]),
        pulled.clone(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = pulled.load(Ordering::Relaxed);
    // 256 KiB of window plus a 64 KiB pipe buffer, in base64 with tags.
    assert!(
        held < 600 * 1024,
        "{held} bytes of wire text while nobody read"
    );
    assert!(ex.control.try_status().is_none());
    let out = read_all(&mut ex.stdout).await;
    assert_eq!(out.len(), 64 << 20);
    assert_eq!(ex.control.wait().await.unwrap().code, 0);
}

#[tokio::test]
async fn a_terminal_has_its_size_and_follows_resizes() {
    let g = guest();
    let mut s = spec(&["sh", "-c", "stty size; read line; stty size; tty"]);
    s.tty = Some(PtySize {
        rows: 30,
        cols: 100,
    });
    let mut ex = run(&g, s, Arc::default()).await;
    assert!(ex.stderr.is_none());
    let mut stdout = ex.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("30 100") {
        let n = stdout.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "ended before the size: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    ex.control
        .resize(PtySize {
            rows: 50,
            cols: 132,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stdin = ex.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    stdout.read_to_end(&mut seen).await.unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("50 132"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert_eq!(ex.control.wait().await.unwrap().code, 0);
}

struct Sink;

#[async_trait]
impl WireInput for Sink {
    async fn send(&mut self, _bytes: Vec<u8>) -> blink_sdk::error::Result<()> {
        Ok(())
    }
}

/// A guest that ignores its window (what a hostile root in a box could
/// make the wrapper's stdout say) is cut off: the host takes at most a
/// bounded amount of its text, then reports the execution failed.
#[tokio::test]
async fn a_guest_that_ignores_its_window_is_cut_off() {
    // Like BoxLite's own channel: a task pushes the guest's text into an
    // unbounded queue as fast as it comes, whoever reads (capped at 64 MiB
    // so a broken build cannot run away).
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let line = format!("o {}\n", "QUFB".repeat(8 * 1024));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while counter.load(Ordering::Relaxed) < 64 << 20 {
            if tx.send(line.clone()).is_err() {
                return;
            }
            counter.fetch_add(line.len() as u64, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    });
    let flood =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) });
    let mut ex = wire::start(
        WireProcess {
            input: Box::new(Sink),
            output: Box::pin(flood),
            ended: Box::pin(std::future::pending()),
        },
        &spec(&["true"]),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = pulled.load(Ordering::Relaxed);
    assert!(
        held <= (wire::MAX_UNHANDLED_TEXT + 256 * 1024) as u64,
        "{held} bytes queued by a guest nobody read"
    );
    // Reading on, the caller gets what was delivered, then the failure.
    let mut sink = Vec::new();
    let _ = ex.stdout.as_mut().unwrap().read_to_end(&mut sink).await;
    let err = ex.control.wait().await.unwrap_err().to_string();
    assert!(err.contains("beyond its window"), "{err}");
}
