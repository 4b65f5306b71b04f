//! The russh patch in `patches/russh` (see its BLINK-PATCH.md): with
//! `window_follows_consumption`, a channel's window is renewed only as the
//! application reports bytes consumed. A real russh client and server on
//! 127.0.0.1: a channel whose reader does not consume holds its own client
//! back (no unbounded buffering, no drop), another channel on the same
//! connection keeps flowing, and once the reader consumes, every byte
//! arrives intact. Without the option, russh's own behaviour (windows
//! renewed on arrival) lets the client run ahead: the contrast shows the
//! test can tell the two apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelMsg};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const WINDOW: u32 = 1 << 20;
const TOTAL: usize = 8 << 20;
const CHUNK: usize = 64 << 10;

struct Server {
    opened: mpsc::UnboundedSender<(Channel<Msg>, russh::server::Handle)>,
}

impl russh::server::Handler for Server {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let _ = self.opened.send((channel, session.handle()));
        Ok(())
    }
}

struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A server on 127.0.0.1 with one client connected and authenticated.
async fn connect(
    follows: bool,
) -> (
    russh::client::Handle<AnyHost>,
    mpsc::UnboundedReceiver<(Channel<Msg>, russh::server::Handle)>,
) {
    connect_with(follows, false).await
}

/// As [`connect`], the client's windows following its consumption too
/// when `client_follows`.
async fn connect_with(
    follows: bool,
    client_follows: bool,
) -> (
    russh::client::Handle<AnyHost>,
    mpsc::UnboundedReceiver<(Channel<Msg>, russh::server::Handle)>,
) {
    let seed: [u8; 32] = rand::random();
    let key = russh::keys::PrivateKey::from(
        russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed),
    );
    let config = Arc::new(russh::server::Config {
        keys: vec![key],
        window_size: WINDOW,
        window_follows_consumption: follows,
        auth_rejection_time: Duration::ZERO,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (opened, channels) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let running = russh::server::run_stream(config, socket, Server { opened })
            .await
            .expect("handshake");
        let _ = running.await;
    });
    let client_config = russh::client::Config {
        window_size: WINDOW,
        window_follows_consumption: client_follows,
        ..Default::default()
    };
    let mut client = russh::client::connect(Arc::new(client_config), addr, AnyHost)
        .await
        .expect("connect");
    let auth = client.authenticate_none("flow").await.expect("auth");
    assert!(auth.success());
    (client, channels)
}

/// Send `TOTAL` bytes on a new channel in the background; returns the
/// channel's server side, the bytes sent so far and the data's digest.
async fn start_sending(
    client: &russh::client::Handle<AnyHost>,
    channels: &mut mpsc::UnboundedReceiver<(Channel<Msg>, russh::server::Handle)>,
) -> (
    Channel<Msg>,
    russh::server::Handle,
    Arc<AtomicUsize>,
    Vec<u8>,
) {
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 7 + i / 4096) as u8).collect();
    let digest = Sha256::digest(&data).to_vec();
    let channel = client.channel_open_session().await.expect("open");
    let (server_side, handle) = channels.recv().await.expect("server channel");
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        for chunk in data.chunks(CHUNK) {
            channel.data(chunk).await.expect("send");
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        channel.eof().await.expect("eof");
    });
    (server_side, handle, sent, digest)
}

/// Read what has arrived within `quiet` of silence; report nothing consumed.
async fn drain_without_consuming(channel: &mut Channel<Msg>, quiet: Duration) -> usize {
    let mut received = 0;
    while let Ok(Some(ChannelMsg::Data { data })) =
        tokio::time::timeout(quiet, channel.wait()).await
    {
        received += data.len();
    }
    received
}

#[tokio::test]
async fn a_reader_that_does_not_consume_holds_back_only_its_own_client() {
    let (client, mut channels) = connect(true).await;
    let (mut stalled, handle, sent, digest) = start_sending(&client, &mut channels).await;

    // Nothing is consumed: the client stops at one window.
    let held = drain_without_consuming(&mut stalled, Duration::from_millis(500)).await;
    assert!(
        held <= WINDOW as usize,
        "{held} bytes arrived past a {WINDOW}-byte window"
    );
    assert!(
        sent.load(Ordering::SeqCst) <= WINDOW as usize + CHUNK,
        "the client was held back"
    );

    // Meanwhile another channel on the same connection flows.
    let other = client.channel_open_session().await.expect("open");
    let (mut other_server, other_handle) = channels.recv().await.expect("server channel");
    other.data(&b"still here"[..]).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), other_server.wait())
        .await
        .expect("the other channel is not stalled");
    match got {
        Some(ChannelMsg::Data { data }) => {
            assert_eq!(&data[..], b"still here");
            other_handle.consumed(other_server.id(), data.len() as u32);
        }
        other => panic!("unexpected {other:?}"),
    }

    // Consuming what was held, then everything after it, lets it all
    // through, byte for byte.
    let id = stalled.id();
    handle.consumed(id, held as u32);
    let mut hasher = Sha256::new();
    hasher.update(
        (0..held)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut total = held;
    while total < TOTAL {
        match tokio::time::timeout(Duration::from_secs(10), stalled.wait()).await {
            Ok(Some(ChannelMsg::Data { data })) => {
                hasher.update(&data);
                total += data.len();
                handle.consumed(id, data.len() as u32);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(total, TOTAL, "every byte arrived");
    assert_eq!(hasher.finalize().to_vec(), digest);
}

#[tokio::test]
async fn without_the_option_windows_are_renewed_on_arrival() {
    let (client, mut channels) = connect(false).await;
    let (mut unread, _handle, _sent, _digest) = start_sending(&client, &mut channels).await;
    let arrived = drain_without_consuming(&mut unread, Duration::from_millis(500)).await;
    assert!(
        arrived > 2 * WINDOW as usize,
        "upstream behaviour: {arrived} bytes arrived with nothing consumed"
    );
}

/// The same on the client side (`client::Config::window_follows_consumption`,
/// `client::Handle::consumed`), which a cluster router's link to a node
/// uses: the server sends on a channel whose client reader does not
/// consume; the server is held at one window, another channel flows, and
/// consuming lets every byte through.
#[tokio::test]
async fn a_client_that_does_not_consume_holds_back_only_that_channel_of_the_server() {
    let (client, mut channels) = connect_with(false, true).await;
    let mut stalled = client.channel_open_session().await.expect("open");
    let (server_side, _handle) = channels.recv().await.expect("server channel");
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 13 + i / 999) as u8).collect();
    let digest = Sha256::digest(&data).to_vec();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        for chunk in data.chunks(CHUNK) {
            server_side.data(chunk).await.expect("send");
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        server_side.eof().await.expect("eof");
    });
    let mut received = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), stalled.wait()).await
    {
        if let ChannelMsg::Data { data } = msg {
            received.extend_from_slice(&data);
        }
    }
    assert!(
        received.len() <= WINDOW as usize,
        "{} bytes arrived past a {WINDOW}-byte window",
        received.len()
    );
    assert!(sent.load(Ordering::SeqCst) <= WINDOW as usize + CHUNK);

    // Another channel on the same connection still flows.
    let mut other = client.channel_open_session().await.expect("open");
    let (other_server, _) = channels.recv().await.expect("server channel");
    other_server.data(&b"still here"[..]).await.expect("send");
    match tokio::time::timeout(Duration::from_secs(5), other.wait())
        .await
        .expect("the other channel is not stalled")
    {
        Some(ChannelMsg::Data { data }) => assert_eq!(&data[..], b"still here"),
        other => panic!("unexpected {other:?}"),
    }

    // Consuming lets it all through, byte for byte.
    let id = stalled.id();
    client
        .consumed(id, received.len() as u32)
        .await
        .expect("consumed");
    while received.len() < TOTAL {
        match tokio::time::timeout(Duration::from_secs(10), stalled.wait()).await {
            Ok(Some(ChannelMsg::Data { data })) => {
                received.extend_from_slice(&data);
                client
                    .consumed(id, data.len() as u32)
                    .await
                    .expect("consumed");
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(received.len(), TOTAL, "every byte arrived");
    assert_eq!(Sha256::digest(&received).to_vec(), digest);
}
