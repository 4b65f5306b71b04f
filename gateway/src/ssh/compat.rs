//! Compatibility rules keyed on the client's SSH identification string
//! (`SSH-2.0-softwareversion comments`, RFC 4253 §4.2), as OpenSSH's
//! compat.c keys its own: what a client is known to do differently from
//! the specifications, and what the gateway does about it.
//!
//! - **SFTP SYMLINK argument order.** The SFTP draft (filexfer-02 §6.10)
//!   sends the link's path, then its target; OpenSSH's sftp and
//!   sftp-server swapped them (target, then link path: OpenSSH's PROTOCOL,
//!   §4.1), and so did clients written against OpenSSH's server, always,
//!   whatever server they talk to. Careful clients (asyncssh, libssh) send
//!   the draft's order unless the *server's* version string names a
//!   swapping implementation, which Blink's (`SSH-2.0-blink`) does not. So
//!   the in-sandbox sftp server (`blink-guest sftp-server
//!   --symlink-order`) reads the client's order from the client's version,
//!   as asyncssh's own server does.

/// The order of SSH_FXP_SYMLINK's two paths a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymlinkOrder {
    /// Target, then link path: OpenSSH's order.
    OpenSsh,
    /// Link path, then target: the draft's order.
    Draft,
}

impl SymlinkOrder {
    /// The value of `blink-guest sftp-server --symlink-order`.
    pub fn flag(self) -> &'static str {
        match self {
            SymlinkOrder::OpenSsh => "openssh",
            SymlinkOrder::Draft => "draft",
        }
    }
}

/// Software versions (prefixes of what follows `SSH-2.0-`) of clients
/// that always send SYMLINK in OpenSSH's order, read from their code:
/// - `OpenSSH` (also `OpenSSH_for_Windows_…`): sftp-client.c;
/// - `paramiko`: `SFTPClient.symlink(source, dest)` sends source first
///   (asyncssh's server lists OpenSSH and paramiko the same way);
/// - `libssh2`: `libssh2_sftp_symlink(orig, linkpath)` sends orig first
///   (curl, PHP's ssh2, git2 and many bindings);
/// - `Go`: golang.org/x/crypto/ssh's default version, under github.com/
///   pkg/sftp, whose `Symlink(old, new)` sends the target first.
///
/// Anyone else (asyncssh, libssh, russh-sftp, ...) is taken at the
/// draft's word.
const OPENSSH_SYMLINK_ORDER: &[&str] = &["OpenSSH", "paramiko", "libssh2", "Go"];

/// The software version of an identification string: what follows
/// `SSH-2.0-` (or `SSH-1.99-`) up to the first space. Empty when the
/// string has no such form.
fn software_version(id: &[u8]) -> &[u8] {
    let rest = id
        .strip_prefix(b"SSH-2.0-")
        .or_else(|| id.strip_prefix(b"SSH-1.99-"))
        .unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Whether a software version is `name` or starts with it followed by a
/// separator (`OpenSSH_9.6`, `paramiko_3.4.0`, `Go`), so `Gopher` is not
/// `Go`.
fn is_implementation(version: &[u8], name: &str) -> bool {
    match version.strip_prefix(name.as_bytes()) {
        Some([]) => true,
        Some([next, ..]) => !next.is_ascii_alphanumeric(),
        None => false,
    }
}

/// The SYMLINK order of a client, from its identification string.
pub fn symlink_order(client_id: &[u8]) -> SymlinkOrder {
    let version = software_version(client_id);
    if OPENSSH_SYMLINK_ORDER
        .iter()
        .any(|name| is_implementation(version, name))
    {
        SymlinkOrder::OpenSsh
    } else {
        SymlinkOrder::Draft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_order_follows_the_client() {
        for id in [
            "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10",
            "SSH-2.0-OpenSSH_for_Windows_8.1",
            "SSH-2.0-OpenSSH_7.4",
            "SSH-1.99-OpenSSH_3.9p1",
            "SSH-2.0-paramiko_3.4.0",
            "SSH-2.0-libssh2_1.11.0",
            "SSH-2.0-Go",
        ] {
            assert_eq!(symlink_order(id.as_bytes()), SymlinkOrder::OpenSsh, "{id}");
        }
        for id in [
            "SSH-2.0-AsyncSSH_2.24.1",
            "SSH-2.0-libssh_0.10.6",
            "SSH-2.0-russh_0.65.1",
            "SSH-2.0-Gopher",
            "SSH-2.0-openssh_9.0",
            // Only the software version counts, not a comment.
            "SSH-2.0-AsyncSSH_2.24 OpenSSH",
            "SSH-2.0-",
            "OpenSSH_9.2",
            "",
        ] {
            assert_eq!(symlink_order(id.as_bytes()), SymlinkOrder::Draft, "{id}");
        }
        assert_eq!(SymlinkOrder::OpenSsh.flag(), "openssh");
        assert_eq!(SymlinkOrder::Draft.flag(), "draft");
    }

    #[test]
    fn software_version_is_bounded_by_the_first_space() {
        assert_eq!(
            software_version(b"SSH-2.0-OpenSSH_9.2p1 Debian"),
            b"OpenSSH_9.2p1"
        );
        assert_eq!(software_version(b"SSH-2.0-x\r\n"), b"x");
        assert_eq!(software_version(b"SSH-3.0-x"), b"");
    }
}
