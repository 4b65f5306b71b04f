//! The observer put on an sftp execution's pipes: its stdin (the
//! client's bytes) and stdout (the server's), wrapped so that every byte
//! crossing them is shown to one [`Observer`] on its way, and nothing
//! else changes. The observer's last holder to go (both pipes done) ends
//! the observation.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use blink_sdk::runtime::exec::{ByteReader, ByteWriter, Execution};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Audit, Context, Observer, Sink};
use crate::ssh::compat::SymlinkOrder;

/// Observe the SFTP on `execution`'s stdin and stdout (an sftp-server's),
/// for the audit log and metrics of `context`'s channel.
pub fn tap(execution: &mut Execution, order: SymlinkOrder, context: Context) {
    let shared = Arc::new(Shared(Mutex::new(Observer::new(order, Audit(context)))));
    if let Some(stdin) = execution.stdin.take() {
        execution.stdin = Some(Box::pin(ToServer {
            inner: stdin,
            observer: shared.clone(),
            ahead: 0,
        }));
    }
    if let Some(stdout) = execution.stdout.take() {
        execution.stdout = Some(Box::pin(FromServer {
            inner: stdout,
            observer: shared,
        }));
    }
}

/// The observer, shared by both pipes; finished when both are dropped.
struct Shared<S: Sink>(Mutex<Observer<S>>);

impl<S: Sink> Shared<S> {
    fn client(&self, bytes: &[u8]) {
        if let Ok(mut observer) = self.0.lock() {
            observer.client(bytes);
        }
    }

    fn server(&self, bytes: &[u8]) {
        if let Ok(mut observer) = self.0.lock() {
            observer.server(bytes);
        }
    }
}

impl<S: Sink> Drop for Shared<S> {
    fn drop(&mut self) {
        if let Ok(observer) = self.0.get_mut() {
            observer.finish();
        }
    }
}

/// The server's stdin. Bytes are observed before they are written, so
/// that a request is always seen before the server can answer it:
/// `ahead` counts those observed and not yet accepted, which the writer
/// (`write_all`) offers again at the start of its next write.
struct ToServer<S: Sink> {
    inner: ByteWriter,
    observer: Arc<Shared<S>>,
    ahead: usize,
}

impl<S: Sink> AsyncWrite for ToServer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(new) = buf.get(this.ahead..)
            && !new.is_empty()
        {
            this.observer.client(new);
            this.ahead = buf.len();
        }
        let written = this.inner.as_mut().poll_write(cx, buf);
        match &written {
            Poll::Ready(Ok(n)) => this.ahead = this.ahead.saturating_sub(*n),
            // The writer gives up on these bytes.
            Poll::Ready(Err(_)) => this.ahead = 0,
            Poll::Pending => {}
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_shutdown(cx)
    }
}

/// The server's stdout: bytes are observed as they are read.
struct FromServer<S: Sink> {
    inner: ByteReader,
    observer: Arc<Shared<S>>,
}

impl<S: Sink> AsyncRead for FromServer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = this.inner.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &read
            && let Some(new) = buf.filled().get(before..)
            && !new.is_empty()
        {
            this.observer.server(new);
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::sftp_audit::Event;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A sink the test can read after the observer is gone.
    #[derive(Clone, Default)]
    struct Shown(Arc<Mutex<Vec<Event>>>);

    impl Sink for Shown {
        fn event(&mut self, event: Event) {
            if let Ok(mut events) = self.0.lock() {
                events.push(event);
            }
        }
    }

    fn packet(kind: u8, fields: &[u8]) -> Vec<u8> {
        let mut p = ((fields.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(fields);
        p
    }

    /// Bytes through the wrapped pipes arrive unchanged, partial writes
    /// to a small pipe are observed once, and the end is observed when
    /// both pipes are gone.
    #[tokio::test]
    async fn bytes_pass_unchanged_and_are_observed_once() {
        let shown = Shown::default();
        let shared = Arc::new(Shared(Mutex::new(Observer::new(
            SymlinkOrder::OpenSsh,
            shown.clone(),
        ))));
        // A pipe far smaller than the writes: many partial writes.
        let (to_server, mut server_in) = tokio::io::duplex(7);
        let (mut server_out, from_server) = tokio::io::duplex(64);
        let mut stdin = ToServer {
            inner: Box::pin(to_server),
            observer: shared.clone(),
            ahead: 0,
        };
        let mut stdout = FromServer {
            inner: Box::pin(from_server),
            observer: shared,
        };
        let mut sent = packet(1, &3u32.to_be_bytes());
        let mut mkdir = 5u32.to_be_bytes().to_vec();
        mkdir.extend(3u32.to_be_bytes());
        mkdir.extend(b"dir");
        mkdir.extend(0u32.to_be_bytes());
        sent.extend(packet(14, &mkdir));
        let mut open = 6u32.to_be_bytes().to_vec();
        open.extend(1u32.to_be_bytes());
        open.extend(b"f");
        open.extend(1u32.to_be_bytes());
        open.extend(0u32.to_be_bytes());
        sent.extend(packet(3, &open));
        let copy = sent.clone();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; copy.len()];
            server_in.read_exact(&mut got).await.expect("read");
            got
        });
        stdin.write_all(&sent).await.expect("write");
        assert_eq!(reader.await.expect("reader"), sent);

        let mut reply = packet(2, &3u32.to_be_bytes());
        let mut status = 5u32.to_be_bytes().to_vec();
        status.extend(0u32.to_be_bytes());
        reply.extend(packet(101, &status));
        server_out.write_all(&reply).await.expect("write");
        drop(server_out);
        let mut got = Vec::new();
        stdout.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, reply);
        let before_end = shown.0.lock().expect("events").len();
        drop((stdin, stdout));

        let events = shown.0.lock().expect("events").clone();
        let requests = events
            .iter()
            .filter(|e| matches!(e, Event::Request(_)))
            .count();
        assert_eq!(requests, 3, "{events:?}");
        let lines: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Line(l) => Some(format!("{l:?}")),
                _ => None,
            })
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("Mkdir") && lines[0].contains("Status(0)"));
        // The OPEN never had its reply: logged at the end.
        assert!(lines[1].contains("File") && lines[1].contains("NoReply"));
        assert_eq!(before_end, events.len() - 1);
    }
}
