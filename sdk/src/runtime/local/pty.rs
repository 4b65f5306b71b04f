//! Terminals for local sandboxes. The pair is allocated from the sandbox's
//! own devpts (its `/dev/pts/ptmx`, see `Namespaces::open_ptmx`), so inside the sandbox
//! `tty` names a `/dev/pts/N` that exists there.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::runtime::PtySize;

const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
const TIOCGPTPEER: libc::c_ulong = 0x5441;

/// The host side of a sandbox terminal.
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<std::fs::File>,
}

/// Open a terminal pair on the devpts whose multiplexer `master` is (opened
/// non-blocking). Returns the master and the slave for the child's stdio.
pub fn open_pair(master: std::fs::File, size: PtySize) -> io::Result<(Arc<PtyMaster>, OwnedFd)> {
    let unlock: libc::c_int = 0;
    // SAFETY: ioctls on a descriptor we own, with valid argument pointers.
    let slave = unsafe {
        if libc::ioctl(master.as_raw_fd(), TIOCSPTLCK, &unlock) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::ioctl(
            master.as_raw_fd(),
            TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    set_size(master.as_raw_fd(), size)?;
    // SAFETY: the AsyncFd owns the File, so the descriptor stays open for
    // as long as it is registered.
    let fd = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
    Ok((Arc::new(PtyMaster { fd }), slave))
}

fn set_size(fd: i32, size: PtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a terminal fd.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl PtyMaster {
    pub fn resize(&self, size: PtySize) -> io::Result<()> {
        set_size(self.fd.get_ref().as_raw_fd(), size)
    }

    fn poll_read_inner(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO on a master means every slave end is closed: EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write_inner(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|inner| inner.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Reading half of a shared master.
pub struct PtyReader(pub Arc<PtyMaster>);
/// Writing half of a shared master.
pub struct PtyWriter(pub Arc<PtyMaster>);

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.poll_read_inner(cx, buf)
    }
}

impl AsyncWrite for PtyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_inner(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
