//! russh's callbacks for one connection, each turned into a call on
//! [`Conn`] (`requests.rs`, `auth.rs`) and its answer. No decision is made
//! here.

use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Pty, Sig};

use super::auth::Offer;
use super::channel::What;
use super::requests::Conn;

/// Answer a channel request with success or failure.
fn answer(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
    if ok {
        session.channel_success(channel)
    } else {
        session.channel_failure(channel)
    }
}

/// Why a forward was refused, as OpenSSH's sshd tells it: a debug
/// message (`ssh -v` shows it).
fn tell_refusal(session: &mut Session, why: Option<String>) -> Result<(), russh::Error> {
    match why {
        Some(why) => session.debug(false, &format!("blink: {why}"), ""),
        None => Ok(()),
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if offer.certificate.is_none() && self.is_router_key(offer.public_key) {
            return Ok(Auth::Accept);
        }
        let what = match offer.certificate {
            Some(cert) => Offer::Cert(cert),
            None => Offer::Key(offer.public_key),
        };
        let auth = self
            .check_login(user, what, Some(offer.algorithm), false)
            .await;
        self.stats.auth_answered(&auth, false);
        Ok(auth)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let auth = if self.is_router_key(key.public_key) {
            self.check_relayed_login(user).await
        } else {
            self.check_login(user, Offer::Key(key.public_key), Some(key.algorithm), true)
                .await
        };
        self.stats.auth_answered(&auth, true);
        Ok(auth)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        // The algorithm was checked when russh asked about this offer.
        let auth = self
            .check_login(user, Offer::Cert(certificate), None, true)
            .await;
        self.stats.auth_answered(&auth, true);
        Ok(auth)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.open_channel(channel) {
            Ok(()) => reply.accept().await,
            Err(why) => reply.reject(why).await,
        }
        Ok(())
    }

    async fn data(
        &mut self,
        _channel: ChannelId,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The data itself reaches the channel's task directly.
        self.stats.touch();
        Ok(())
    }

    async fn extended_data(
        &mut self,
        _channel: ChannelId,
        _code: u32,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.stats.touch();
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.close_pending(channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = self.request_pty(channel, term, col_width, row_height);
        answer(session, channel, ok)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = self.request_env(channel, name, value);
        answer(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = self.start(channel, What::Shell, session.handle());
        answer(session, channel, ok)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match What::exec(data) {
            Some(what) => self.start(channel, what, session.handle()),
            None => false,
        };
        answer(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match self.subsystem(name, session.remote_sshid()) {
            Some(what) => self.start(channel, what, session.handle()),
            None => false,
        };
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
        // Delivered to the running channel's task through the channel.
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
        let refused = self
            .open_direct_tcpip(
                channel,
                host_to_connect,
                port_to_connect,
                (originator_address, originator_port),
                reply,
                session.handle(),
            )
            .await;
        tell_refusal(session, refused)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let result = self
            .request_remote_forward(address, port, session.handle())
            .await;
        let ok = result.is_ok();
        tell_refusal(session, result.err())?;
        Ok(ok)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        _address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.cancel_remote_forward(port))
    }
}
