//! A connection's socket that the login grace time can cut. russh's
//! session task owns the stream and, until the key exchange is done,
//! handles none of the application's messages (a disconnect included): a
//! cut makes its next read or write fail, and the session ends. Once the
//! connection has authenticated no cut can come, and reads and writes go
//! straight to the socket. Used by nodes (`connection.rs`) and routers
//! (`router/ssh.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What says whether the connection has logged in (then it is never cut).
pub trait Authenticated: Send + Sync {
    fn authenticated(&self) -> bool;
}

/// A socket the grace time can cut.
pub struct Cuttable<A: Authenticated> {
    socket: TcpStream,
    token: CancellationToken,
    state: Arc<A>,
    /// The error a cut read or write fails with.
    reason: &'static str,
    /// One wait per direction, so each registers its own waker.
    read_cut: Pin<Box<WaitForCancellationFutureOwned>>,
    write_cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<A: Authenticated> Cuttable<A> {
    /// `socket`, cut when `token` is cancelled unless `state` says it has
    /// authenticated; a cut read or write fails with `reason`.
    pub fn new(
        socket: TcpStream,
        token: &CancellationToken,
        state: Arc<A>,
        reason: &'static str,
    ) -> Self {
        Self {
            socket,
            token: token.clone(),
            state,
            reason,
            read_cut: Box::pin(token.clone().cancelled_owned()),
            write_cut: Box::pin(token.clone().cancelled_owned()),
        }
    }
}

/// Whether the cut has come (registering `cx` to be woken when it does),
/// unless the connection has authenticated.
fn is_cut(
    state: &dyn Authenticated,
    token: &CancellationToken,
    wait: &mut Pin<Box<WaitForCancellationFutureOwned>>,
    cx: &mut Context<'_>,
) -> bool {
    if state.authenticated() {
        return false;
    }
    token.is_cancelled() || wait.as_mut().poll(cx).is_ready()
}

impl<A: Authenticated> AsyncRead for Cuttable<A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if is_cut(&*this.state, &this.token, &mut this.read_cut, cx) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, this.reason)));
        }
        Pin::new(&mut this.socket).poll_read(cx, buf)
    }
}

impl<A: Authenticated> AsyncWrite for Cuttable<A> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if is_cut(&*this.state, &this.token, &mut this.write_cut, cx) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, this.reason)));
        }
        Pin::new(&mut this.socket).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if is_cut(&*this.state, &this.token, &mut this.write_cut, cx) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, this.reason)));
        }
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}
