//! One recording while it is made: [`Recorder`], the handle the session's
//! side holds, and [`Writer`], the task that turns its events into cast
//! lines on disk.
//!
//! Recording never holds a session back: the handle only ever tries to
//! queue an event (a bounded queue, in events and in bytes), and an event
//! that does not fit, or that the disk refuses, is dropped and counted.
//! The recording's metadata then says it is incomplete. Times are taken
//! when the session's side sees the bytes, not when they are written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use blink_sdk::runtime::PtySize;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use super::cast::{self, Code, Utf8Stream};
use super::store::{Meta, Store};

/// Events queued for the writer at most...
const QUEUE_EVENTS: usize = 1024;
/// ...and bytes of event data.
const QUEUE_BYTES: usize = 1 << 20;
/// Lines written to the file in one go at most (bytes, roughly).
const BATCH_BYTES: usize = 64 << 10;

/// What the session's side saw, and when (seconds since the start).
#[derive(Debug)]
enum Event {
    Data { at: f64, code: Code, bytes: Vec<u8> },
    Resize { at: f64, cols: u16, rows: u16 },
}

/// Counters the handle and the writer share.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes of event data in the queue.
    queued: AtomicUsize,
    /// Events that never made it into the cast.
    dropped: AtomicU64,
}

/// The session's side of a recording. Every method returns at once. The
/// recording ends when the last handle is dropped.
#[derive(Debug)]
pub struct Recorder {
    id: String,
    origin: Instant,
    tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    record_input: bool,
}

impl Recorder {
    /// A handle and its writer's end of the queue.
    pub(super) fn new(id: String, record_input: bool) -> (Self, Queue) {
        let (tx, rx) = mpsc::channel(QUEUE_EVENTS);
        let shared = Arc::new(Shared::default());
        let recorder = Self {
            id,
            origin: Instant::now(),
            tx,
            shared: shared.clone(),
            record_input,
        };
        (recorder, Queue { rx, shared })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes the program wrote to its terminal.
    pub fn output(&self, bytes: &[u8]) {
        self.data(Code::Output, bytes);
    }

    /// Bytes the client typed; recorded only with `record_input`.
    pub fn input(&self, bytes: &[u8]) {
        if self.record_input {
            self.data(Code::Input, bytes);
        }
    }

    /// The terminal's new size.
    pub fn resize(&self, size: PtySize) {
        let event = Event::Resize {
            at: self.now(),
            cols: size.cols,
            rows: size.rows,
        };
        if self.tx.try_send(event).is_err() {
            self.lost(1);
        }
    }

    /// Events lost before they reached the recorder.
    pub fn lost(&self, events: u64) {
        self.shared.dropped.fetch_add(events, Ordering::Relaxed);
    }

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn data(&self, code: Code, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        let queued = self.shared.queued.fetch_add(len, Ordering::Relaxed);
        let event = Event::Data {
            at: self.now(),
            code,
            bytes: bytes.to_vec(),
        };
        if queued + len > QUEUE_BYTES || self.tx.try_send(event).is_err() {
            self.shared.queued.fetch_sub(len, Ordering::Relaxed);
            self.lost(1);
        }
    }
}

/// The writer's end of a recorder's queue.
#[derive(Debug)]
pub(super) struct Queue {
    rx: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
}

/// Writes one cast: the header is already in the file; events are added
/// in batches until every handle is gone, then the metadata says how it
/// ended.
pub(super) struct Writer {
    pub store: Store,
    pub meta: Meta,
    pub file: tokio::fs::File,
    /// Bytes in the file (the header included).
    pub written: u64,
    pub cap: u64,
}

/// Where a writer is in its file.
struct State {
    output: Utf8Stream,
    input: Utf8Stream,
    /// The next batch of lines, and how many events it holds.
    batch: Vec<u8>,
    batch_events: u64,
    /// The time of the last event, for the tail of a split character.
    last_at: f64,
    truncated: bool,
    /// The disk refused a write: nothing more is written.
    failed: bool,
    /// Events dropped here (the cap, the disk).
    dropped: u64,
}

impl Writer {
    /// Write events until the recording ends; returns its final metadata
    /// (also written beside the cast).
    pub async fn run(mut self, mut queue: Queue) -> Meta {
        let mut st = State {
            output: Utf8Stream::default(),
            input: Utf8Stream::default(),
            batch: Vec::new(),
            batch_events: 0,
            last_at: 0.0,
            truncated: false,
            failed: false,
            dropped: 0,
        };
        while let Some(event) = queue.rx.recv().await {
            self.take(&mut st, &queue, event);
            // Everything already queued goes in the same write.
            while st.batch.len() < BATCH_BYTES {
                match queue.rx.try_recv() {
                    Ok(event) => self.take(&mut st, &queue, event),
                    Err(_) => break,
                }
            }
            self.flush(&mut st).await;
        }
        // The end of the stream: an unfinished character as U+FFFD.
        for code in [Code::Output, Code::Input] {
            let tail = match code {
                Code::Output => st.output.finish(),
                _ => st.input.finish(),
            };
            if !tail.is_empty() {
                let at = st.last_at;
                self.add(&mut st, at, code, &tail);
            }
        }
        self.flush(&mut st).await;
        let dropped = queue.shared.dropped.load(Ordering::Relaxed) + st.dropped;
        self.meta.ended_at = Some(blink_sdk::manager::now_secs());
        self.meta.dropped_events = dropped;
        self.meta.truncated = st.truncated;
        self.meta.complete = dropped == 0 && !st.truncated && !st.failed;
        let store = self.store.clone();
        let meta = self.meta.clone();
        let saved = tokio::task::spawn_blocking(move || store.write_meta(&meta)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(session = %self.meta.session, recording = %self.meta.id, error = %e, "recording metadata not written");
        }
        self.meta
    }

    /// One event into the batch, as a cast line.
    fn take(&mut self, st: &mut State, queue: &Queue, event: Event) {
        match event {
            Event::Data { at, code, bytes } => {
                queue
                    .shared
                    .queued
                    .fetch_sub(bytes.len(), Ordering::Relaxed);
                st.last_at = at;
                let text = match code {
                    Code::Input => st.input.push(&bytes),
                    _ => st.output.push(&bytes),
                };
                // Empty: only the start of a character, which goes with
                // the next.
                if !text.is_empty() {
                    self.add(st, at, code, &text);
                }
            }
            Event::Resize { at, cols, rows } => {
                st.last_at = at;
                self.add(st, at, Code::Resize, &cast::resize_data(cols, rows));
            }
        }
    }

    /// An event into the batch, unless the cast is at its cap or the disk
    /// has failed. Output that does not fit under the cap is cut (between
    /// characters) so that the cast ends at the cap.
    fn add(&mut self, st: &mut State, at: f64, code: Code, text: &str) {
        if st.failed || st.truncated {
            st.dropped += 1;
            return;
        }
        let room = self
            .cap
            .saturating_sub(self.written + st.batch.len() as u64) as usize;
        let line = cast::event_line(at, code, text);
        if line.len() <= room {
            st.batch.extend_from_slice(line.as_bytes());
            st.batch_events += 1;
            return;
        }
        st.truncated = true;
        st.dropped += 1;
        if code == Code::Output
            && let Some(line) = fitted(at, text, room)
        {
            st.batch.extend_from_slice(line.as_bytes());
        }
    }

    /// Write the batch. If the disk refuses it, the file is cut back to
    /// its last whole line, the batch's events are counted as dropped and
    /// nothing more is written.
    async fn flush(&mut self, st: &mut State) {
        if st.batch.is_empty() {
            return;
        }
        let result = async {
            self.file.write_all(&st.batch).await?;
            self.file.flush().await
        }
        .await;
        match result {
            Ok(()) => self.written += st.batch.len() as u64,
            Err(e) => {
                tracing::warn!(session = %self.meta.session, recording = %self.meta.id, error = %e, "recording write failed; the rest of it is dropped");
                st.failed = true;
                st.dropped += st.batch_events;
                let _ = self.file.set_len(self.written).await;
            }
        }
        st.batch.clear();
        st.batch_events = 0;
    }
}

/// The longest start of `text` whose output line takes at most `room`
/// bytes, if any does (a binary search over character boundaries: a
/// longer start never makes a shorter line).
fn fitted(at: f64, text: &str, room: usize) -> Option<String> {
    let fits = |end: usize| cast::event_line(at, Code::Output, &text[..end]).len() <= room;
    // The answer is a boundary in lo..=hi; lo fits (0: nothing does yet).
    let (mut lo, mut hi) = (0, text.len().min(room));
    while lo < hi {
        let mut mid = (lo + hi).div_ceil(2);
        while mid > lo && !text.is_char_boundary(mid) {
            mid -= 1;
        }
        if mid == lo {
            mid = lo + 1;
            while !text.is_char_boundary(mid) {
                mid += 1;
            }
            if mid > hi {
                break;
            }
        }
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo > 0).then(|| cast::event_line(at, Code::Output, &text[..lo]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta(store_session: &str, id: &str) -> Meta {
        Meta {
            id: id.into(),
            session: store_session.into(),
            started_at: 1,
            ended_at: None,
            source: "ssh".into(),
            login: None,
            peer: None,
            execution: None,
            cols: 80,
            rows: 24,
            input_recorded: false,
            complete: false,
            dropped_events: 0,
            truncated: false,
        }
    }

    /// A writer on a fresh cast in a temporary store.
    async fn writer(
        tmp: &std::path::Path,
        cap: u64,
        record_input: bool,
    ) -> (Recorder, Writer, Queue) {
        let store = Store::new(tmp.join("recordings"));
        store.make_session_dir("s1").unwrap();
        let id = super::super::store::new_id(1, 0);
        let (cast, _) = store.paths("s1", &id).unwrap();
        let file = super::super::store::create_cast(&cast).unwrap();
        let (recorder, queue) = Recorder::new(id.clone(), record_input);
        let writer = Writer {
            store,
            meta: meta("s1", &id),
            file: tokio::fs::File::from_std(file),
            written: 0,
            cap,
        };
        (recorder, writer, queue)
    }

    fn lines(writer_store: &Store, id: &str) -> Vec<serde_json::Value> {
        let (cast, _) = writer_store.paths("s1", id).unwrap();
        std::fs::read_to_string(cast)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    #[tokio::test]
    async fn events_become_lines_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (recorder, writer, queue) = writer(tmp.path(), 1 << 20, false).await;
        let store = writer.store.clone();
        let id = recorder.id().to_owned();
        let task = tokio::spawn(writer.run(queue));
        recorder.output(b"caf\xc3");
        recorder.output(b"\xa9 \xff!");
        recorder.input(b"secret\r");
        recorder.resize(PtySize {
            rows: 30,
            cols: 100,
        });
        recorder.output(b"\xe2\x9c");
        drop(recorder);
        let meta = task.await.unwrap();
        assert!(meta.complete, "{meta:?}");
        assert_eq!(meta.dropped_events, 0);
        let got = lines(&store, &id);
        let codes: Vec<(&str, &str)> = got
            .iter()
            .map(|v| (v[1].as_str().unwrap(), v[2].as_str().unwrap()))
            .collect();
        // The split é comes whole; input is not recorded; the unfinished
        // ✓ at the end becomes U+FFFD.
        assert_eq!(
            codes,
            [
                ("o", "caf"),
                ("o", "é \u{fffd}!"),
                ("r", "100x30"),
                ("o", "\u{fffd}")
            ]
        );
        let times: Vec<f64> = got.iter().map(|v| v[0].as_f64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert_eq!(store.read_meta("s1", &id).unwrap().unwrap(), meta);
    }

    #[tokio::test]
    async fn input_is_recorded_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let (recorder, writer, queue) = writer(tmp.path(), 1 << 20, true).await;
        let store = writer.store.clone();
        let id = recorder.id().to_owned();
        let task = tokio::spawn(writer.run(queue));
        recorder.input(b"ls\r");
        drop(recorder);
        task.await.unwrap();
        let got = lines(&store, &id);
        assert_eq!(got[0][1], "i");
        assert_eq!(got[0][2], "ls\r");
    }

    #[tokio::test]
    async fn the_cast_stops_at_its_cap_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let (recorder, writer, queue) = writer(tmp.path(), 4096, false).await;
        let store = writer.store.clone();
        let id = recorder.id().to_owned();
        let task = tokio::spawn(writer.run(queue));
        for _ in 0..100 {
            recorder.output(&[b'x'; 100]);
            tokio::task::yield_now().await;
        }
        drop(recorder);
        let meta = task.await.unwrap();
        assert!(meta.truncated && !meta.complete, "{meta:?}");
        assert!(meta.dropped_events > 0);
        let (cast, _) = store.paths("s1", &id).unwrap();
        let size = std::fs::metadata(&cast).unwrap().len();
        // Whole lines, the last one cut to end at the cap.
        assert!(size <= 4096 && size > 4000, "{size}");
        assert!(lines(&store, &id).len() > 20);
    }

    #[test]
    fn output_is_cut_to_fit_between_characters() {
        let text = "é\u{1b}x".repeat(50);
        for room in 0..200 {
            match fitted(1.5, &text, room) {
                Some(line) => {
                    assert!(line.len() <= room && line.ends_with('\n'));
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let got = v[2].as_str().unwrap();
                    assert!(text.starts_with(got) && !got.is_empty());
                    // Nothing longer would have fitted.
                    let more = text[got.len()..].chars().next().unwrap();
                    let longer = &text[..got.len() + more.len_utf8()];
                    assert!(cast::event_line(1.5, Code::Output, longer).len() > room);
                }
                None => assert!(cast::event_line(1.5, Code::Output, "é").len() > room),
            }
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_never_waits() {
        let tmp = tempfile::tempdir().unwrap();
        let (recorder, writer, queue) = writer(tmp.path(), 1 << 30, false).await;
        // The writer is not running: nothing leaves the queue.
        let started = Instant::now();
        for _ in 0..(QUEUE_EVENTS * 4) {
            recorder.output(&[b'y'; 16]);
        }
        // Bytes are bounded too.
        recorder.output(&vec![b'z'; QUEUE_BYTES + 1]);
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = recorder.shared.dropped.load(Ordering::Relaxed);
        assert_eq!(dropped, (QUEUE_EVENTS * 3 + 1) as u64);
        drop(recorder);
        let meta = writer.run(queue).await;
        assert!(!meta.complete);
        assert_eq!(meta.dropped_events, dropped);
    }

    #[tokio::test]
    async fn a_disk_that_refuses_writes_drops_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let (recorder, mut writer, queue) = writer(tmp.path(), 1 << 30, false).await;
        // /dev/full: every write fails with ENOSPC.
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
        if !blink_sdk::testing::require(full.is_ok(), "/dev/full (a disk that is always full)") {
            return;
        }
        let full = full.unwrap();
        writer.file = tokio::fs::File::from_std(full);
        let task = tokio::spawn(writer.run(queue));
        for _ in 0..10 {
            recorder.output(b"hello");
            tokio::task::yield_now().await;
        }
        drop(recorder);
        let meta = task.await.unwrap();
        assert!(!meta.complete && !meta.truncated, "{meta:?}");
        assert_eq!(meta.dropped_events, 10);
    }
}
