//! The front door's SSH server: users log in to `SESSION@router` as they
//! would to a node; each connection is relayed over an internal SSH link
//! to the node that owns the session (`link.rs`), channel by channel.
//!
//! Authentication: the client proves here that it holds its key (russh
//! checks the signature); the node decides whether that key, from that
//! address, may reach that session (`ssh/auth/relayed.rs`), so keys,
//! certificates, revocations, the hook and key options act as on a direct
//! login. Channels: requests (PTY, env, exec, shell, subsystem) are sent
//! to the node and its answer relayed; data, EOF, window changes and
//! signals pass both ways; the node's exit status or signal, EOF and close
//! come back as the node sent them. `direct-tcpip` channels (`ssh -L`,
//! `-D`, `-W`) are opened on the node, which decides on them by its rules,
//! and relayed the same way (`relay.rs`). Remote forwarding (`-R`):
//! `tcpip-forward` and `cancel-tcpip-forward` are sent to the node and its
//! answer (with the port it bound for port 0) relayed; the
//! `forwarded-tcpip` channels it then opens are opened on the client and
//! relayed (`remote_forward.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use blink_sdk::escape::Escaped;
use blink_sdk::manager::names;
use russh::keys::{Certificate, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty, Sig};
use tokio::sync::{Semaphore, watch};

use super::link::{self, Link};
use super::relay::{self, NodeWrite, Relay};
use super::remote_forward::RemoteForwards;
use crate::cluster::{Store, nodes, routing};
use crate::config::Limits;
use crate::ssh::admission::{Admission, Pending, RefusalLog};
use crate::ssh::connection::GRACE_REASON;
use crate::ssh::cuttable::Cuttable;
use crate::ssh::relayed::Identity;
use crate::ssh::server;
use tokio_util::sync::CancellationToken;

/// Time a node has to answer a channel request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-channel window (as a node's).
const CHANNEL_WINDOW: u32 = 2 * 1024 * 1024;

/// Once told that its grace time is over, how long an unauthenticated
/// connection may take to close before it is dropped.
const GRACE_GOODBYE: Duration = Duration::from_millis(500);

/// What every connection shares.
struct Shared {
    store: Store,
    router_key: Arc<PrivateKey>,
    russh: Arc<russh::server::Config>,
    /// `[ssh.limits]`, as a node's: connections, login grace time.
    limits: Limits,
    /// Admission before authentication (`ssh/admission.rs`), as a node's.
    admission: Arc<Admission>,
}

/// A running router SSH server.
pub struct RouterSsh {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Bind `listen` and serve. Prints `ssh listening on ADDR` once bound.
pub async fn start(
    store: Store,
    listen: SocketAddr,
    host_key: PrivateKey,
    router_key: PrivateKey,
    limits: Limits,
) -> anyhow::Result<RouterSsh> {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let russh = russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-blink".into()),
        preferred: crate::ssh::algorithms::preferred(false),
        methods,
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: limits.max_auth_attempts,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: limits.keepalive_interval(),
        keepalive_max: limits.keepalive_max,
        nodelay: true,
        window_size: CHANNEL_WINDOW,
        maximum_packet_size: 32768,
        // A client's data is credited back once the node took it: a slow
        // node holds back its own client, nothing else.
        window_follows_consumption: true,
        // The node checks certificates' validity (with its clock skew).
        certificate_validity_by_handler: true,
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        store,
        router_key: Arc::new(router_key),
        russh: Arc::new(russh),
        admission: Admission::new(&limits),
        limits,
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the router's SSH server to {listen}"))?;
    let local_addr = listener.local_addr().context("SSH listener address")?;
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
        let lingering = Arc::new(Semaphore::new(server::MAX_LINGERING));
        let mut refusals = RefusalLog::default();
        loop {
            let (socket, peer) = tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "router ssh accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Asked before anything else, as on a node: a flood or a
            // penalized source is refused here, never relayed.
            let startup = match shared.admission.admit(peer.ip()) {
                Ok(startup) => startup,
                Err(refusal) => {
                    refusals.refused(peer, &refusal);
                    server::refuse(socket, refusal.client_line(), &lingering);
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if refusals.line_allowed("max_connections") {
                    tracing::warn!(%peer, "router ssh: too many connections; refused");
                }
                server::refuse(socket, server::TOO_MANY_CONNECTIONS, &lingering);
                continue;
            };
            let _ = socket.set_nodelay(true);
            let pending = Arc::new(Pending::new(startup));
            let handler = RouterConn {
                shared: shared.clone(),
                peer,
                link: None,
                channels: HashMap::new(),
                forwards: RemoteForwards::default(),
                pending: pending.clone(),
            };
            let grace = shared.limits.login_grace_time();
            let config = shared.russh.clone();
            tokio::spawn(async move {
                let _slot = slot;
                serve(config, socket, handler, peer, grace, pending.clone()).await;
                pending.ended(peer);
            });
        }
    });
    println!("ssh listening on {local_addr}");
    tracing::info!(addr = %local_addr, "router SSH listening");
    Ok(RouterSsh {
        local_addr,
        stop,
        task,
    })
}

/// Serve one connection; unauthenticated at `grace` after it was accepted,
/// it is told why and dropped (its source penalized for it).
async fn serve(
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    handler: RouterConn,
    peer: SocketAddr,
    grace: Duration,
    pending: Arc<Pending>,
) {
    let deadline = tokio::time::Instant::now() + grace;
    // Until the key exchange is done russh reads no message of ours (a
    // disconnect included): past the grace time the socket is cut.
    let cut = CancellationToken::new();
    let stream = Cuttable::new(socket, &cut, pending.clone(), GRACE_REASON);
    let handshake =
        tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler));
    let mut running = match handshake.await {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "router ssh handshake failed");
            return;
        }
        Err(_) => {
            pending.grace_exceeded();
            tracing::info!(%peer, "router ssh login grace time exceeded in the version exchange: closing");
            return;
        }
    };
    let handle = running.handle();
    let ended = tokio::select! {
        ended = &mut running => Some(ended),
        () = tokio::time::sleep_until(deadline) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None if pending.is_authenticated() => running.await,
        None => {
            pending.grace_exceeded();
            tracing::info!(%peer, "router ssh login grace time exceeded: closing");
            let goodbye = handle.disconnect(
                russh::Disconnect::ByApplication,
                GRACE_REASON.into(),
                String::new(),
            );
            let _ = tokio::time::timeout(GRACE_GOODBYE, goodbye).await;
            if tokio::time::timeout(GRACE_GOODBYE, &mut running)
                .await
                .is_err()
            {
                cut.cancel();
                let _ = running.await;
            }
            return;
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "router ssh connection ended");
    }
}

impl RouterSsh {
    /// Stop accepting; connections in flight end with their clients.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// One client connection.
struct RouterConn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The link to the session's node, once logged in.
    link: Option<Link>,
    /// Each client channel's node channel (its write half) and the node's
    /// answers to the requests sent on it.
    channels: HashMap<ChannelId, Relay>,
    /// Its `ssh -R` forwards, held on the node.
    forwards: RemoteForwards,
    /// Its standing with admission until it authenticates.
    pending: Arc<Pending>,
}

fn answer(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
    if ok {
        session.channel_success(channel)
    } else {
        session.channel_failure(channel)
    }
}

impl RouterConn {
    /// Log in at the session's node with the client's proven identity.
    async fn login(&mut self, user: &str, identity: Identity) -> Auth {
        if self.link.is_some() || names::validate(user).is_err() {
            return Auth::reject();
        }
        let store = &self.shared.store;
        let started = std::time::Instant::now();
        // Both reads at once: they are on every login's path.
        let node = match tokio::try_join!(routing::get(store, user), nodes::live(store)) {
            // Unavailable while it moves (or a crashed move is undone by
            // the next REST request): never two copies in use.
            Ok((Some(read), _)) if read.route.moving_to.is_some() => None,
            Ok((Some(read), live)) => live.into_iter().find(|n| n.name == read.route.node),
            Ok((None, _)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "router ssh: cluster store");
                None
            }
        };
        let Some(node) = node else {
            tracing::info!(peer = %self.peer, login = %Escaped(user), "router ssh login refused: no live node holds the session");
            return Auth::reject();
        };
        let routed = started.elapsed();
        match link::open(
            &node,
            user,
            self.peer.ip(),
            &identity,
            &self.shared.router_key,
        )
        .await
        {
            Ok(Some(link)) => {
                // What the hop costs a login: the route, then the link.
                tracing::info!(
                    peer = %self.peer,
                    login = %Escaped(user),
                    node = %node.name,
                    route_us = routed.as_micros() as u64,
                    link_us = (started.elapsed() - routed).as_micros() as u64,
                    "router ssh login relayed"
                );
                self.link = Some(link);
                Auth::Accept
            }
            Ok(None) => Auth::reject(),
            Err(e) => {
                tracing::warn!(peer = %self.peer, node = %node.name, error = %e, "router ssh: link to the node failed");
                Auth::reject()
            }
        }
    }

    /// Note a login's answer with admission: a success frees the
    /// connection's place, a refusal counts towards its source's penalty.
    fn answered(&self, auth: Auth) -> Auth {
        if matches!(auth, Auth::Accept) {
            self.pending.authenticated();
        } else {
            self.pending.auth_refused();
        }
        auth
    }

    /// Relay a client channel and its node channel both ways.
    fn relay(
        &mut self,
        channel: Channel<Msg>,
        node: russh::Channel<russh::client::Msg>,
        handle: russh::server::Handle,
    ) {
        let id = channel.id();
        let Some(link) = &self.link else {
            return;
        };
        self.channels
            .insert(id, relay::spawn(channel, node, handle, link.credit()));
    }

    /// Send a request to the node's channel and wait for its answer.
    async fn relay_request<F, Fut>(&mut self, channel: ChannelId, send: F) -> bool
    where
        F: FnOnce(Arc<NodeWrite>) -> Fut,
        Fut: Future<Output = Result<(), russh::Error>>,
    {
        let Some(relay) = self.channels.get_mut(&channel) else {
            return false;
        };
        if send(relay.node.clone()).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(REPLY_TIMEOUT, relay.replies.recv()).await,
            Ok(Some(true))
        )
    }
}

impl russh::server::Handler for RouterConn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Whether the key may log in is the node's to say, once the client
        // has proven it holds it.
        if names::validate(user).is_err() || !crate::ssh::algorithm_allowed(offer.algorithm) {
            self.pending.auth_refused();
            return Ok(Auth::reject());
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let auth = self
            .login(user, Identity::Key(key.public_key.clone()))
            .await;
        Ok(self.answered(auth))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let auth = self
            .login(user, Identity::Cert(Box::new(certificate.clone())))
            .await;
        Ok(self.answered(auth))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(link) = &self.link else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let node = match link.open_session().await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(peer = %self.peer, error = %e, "router ssh: the node refused a channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        self.relay(channel, node, session.handle());
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(link) = &self.link else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let node = match link
            .open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let reason = match e {
                    russh::Error::ChannelOpenFailure(reason) => reason,
                    _ => ChannelOpenFailure::ConnectFailed,
                };
                reply.reject(reason).await;
                return Ok(());
            }
        };
        reply.accept().await;
        self.relay(channel, node, session.handle());
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(link) = &mut self.link else {
            return Ok(false);
        };
        Ok(self
            .forwards
            .request(link, address, port, session.handle())
            .await)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(link) = &self.link else {
            return Ok(false);
        };
        Ok(self.forwards.cancel(link, address, port).await)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = self
            .relay_request(channel, |node| async move {
                node.request_pty(
                    true, term, col_width, row_height, pix_width, pix_height, modes,
                )
                .await
            })
            .await;
        answer(session, channel, ok)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = self
            .relay_request(channel, |node| async move {
                node.set_env(true, name, value).await
            })
            .await;
        answer(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = self
            .relay_request(
                channel,
                |node| async move { node.request_shell(true).await },
            )
            .await;
        answer(session, channel, ok)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = data.to_vec();
        let ok = self
            .relay_request(
                channel,
                |node| async move { node.exec(true, command).await },
            )
            .await;
        answer(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = self
            .relay_request(channel, |node| async move {
                node.request_subsystem(true, name).await
            })
            .await;
        answer(session, channel, ok)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        answer(session, channel, false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn signal(
        &mut self,
        _channel: ChannelId,
        _signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Relayed by the channel's task (`client_to_node`).
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        _channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Relayed by the channel's task (`client_to_node`).
        Ok(())
    }
}
