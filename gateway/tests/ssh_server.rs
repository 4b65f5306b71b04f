//! `SshServer` in-process: started on a free port, shut down with clients
//! that run nothing. No sandbox is started (the e2e suite covers channels
//! running through a shutdown: tests/tests/ssh_shutdown.rs).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blink_sdk::manager::{Manager, ManagerConfig};
use blink_server::config::SshConfig;
use blink_server::recording::{RecordingConfig, Recordings};
use blink_server::{hostkey, ssh};
use russh::client::{DisconnectReason, RemoteDisconnectInfo};
use tokio::io::AsyncReadExt as _;

/// Trusts any host key and keeps what the server said when it left.
struct Client {
    told: Arc<Mutex<Option<RemoteDisconnectInfo>>>,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                *self.told.lock().unwrap() = Some(info);
                Ok(())
            }
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_why_and_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let manager = Manager::open(ManagerConfig::new(dir.path().join("data")))
        .await
        .unwrap();
    let host_key = hostkey::load_or_generate(&dir.path().join("host_key")).unwrap();
    let config = SshConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..SshConfig::default()
    };
    let recordings = Recordings::new(RecordingConfig::default(), &dir.path().join("data"));
    let server = ssh::start(manager.clone(), config, host_key, recordings)
        .await
        .unwrap();
    let addr = server.local_addr();

    // A client past the key exchange, not logged in.
    let told = Arc::new(Mutex::new(None));
    let client = russh::client::connect(
        Arc::new(russh::client::Config::default()),
        addr,
        Client { told: told.clone() },
    )
    .await
    .unwrap();
    // A connection that never sends its version string (once the server
    // has sent its own, it is accepted and waiting in the version exchange).
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut version = [0u8; 13];
    silent.read_exact(&mut version).await.unwrap();
    assert_eq!(&version, b"SSH-2.0-blink");

    let started = Instant::now();
    server.shutdown(Duration::from_secs(30)).await;
    // Nothing was running: no waiting for the grace, nor for the silent
    // connection's handshake timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let until = Instant::now() + Duration::from_secs(5);
    let info = loop {
        if let Some(info) = told.lock().unwrap().take() {
            break info;
        }
        assert!(Instant::now() < until, "no disconnect message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(info.reason_code, russh::Disconnect::ByApplication));
    assert_eq!(info.message, ssh::SHUTDOWN_REASON);

    // The silent connection was closed: the rest of the version line, EOF.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the silent connection is still open");
    assert_eq!(rest, b"\r\n");

    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    drop(client);
    manager.shutdown().await;
}
