//! Byte streams through the hub: opening one to a method's provider, and
//! data, credit and close relayed with the credit checked (docs/VHUB.md,
//! Streams). The hub never holds more of a stream direction than the
//! credit its receiver granted.

use bytes::Bytes;

use super::frame::{Frame, Kind};
use std::sync::atomic::Ordering;

use super::hub::{Conn, ConnId, Failure, HUB_STREAM_BIT, Hub, Leg, lock};
use super::messages::{self, ErrorBody, Side, StreamOpen, codes};

pub(super) struct StreamLeg {
    /// The other end; `None` once its connection is gone.
    pub(super) peer: Option<Leg>,
    /// Bytes this leg's connection may still send (credit its peer gave).
    pub(super) may_send: u64,
    /// This leg's connection sent its close.
    pub(super) closed: bool,
}

impl Hub {
    pub(super) fn open_stream(
        &self,
        id: ConnId,
        channel: u32,
        open: StreamOpen,
    ) -> Result<(), Failure> {
        messages::check_name("method", &open.method)
            .map_err(|m| Failure::Answer(codes::INVALID_ARGUMENT, m))?;
        let (side, own) = {
            let routes = lock(&self.inner.routes);
            let c = routes
                .conns
                .get(&id)
                .ok_or(Failure::Close(codes::PEER_GONE, "gone".into()))?;
            (c.side, c.session.clone())
        };
        let session = self.target_session((&side, &own), open.session)?;
        let limits = &self.inner.limits;
        let mut routes = lock(&self.inner.routes);
        if routes.streams.contains_key(&(id, channel)) {
            return Err(Failure::Close(
                codes::INVALID_ARGUMENT,
                format!("stream channel {channel} is already open"),
            ));
        }
        let target = Self::provider(&routes, side, &session, &open.method).ok_or_else(|| {
            Failure::Answer(
                codes::NO_SUCH_METHOD,
                format!(
                    "nothing in session {session:?} accepts streams for {:?}",
                    open.method
                ),
            )
        })?;
        let max = limits.streams_per_connection;
        let full = |c: Option<&Conn>| c.map(|c| c.streams >= max).unwrap_or(true);
        if full(routes.conns.get(&id)) || full(routes.conns.get(&target)) {
            return Err(Failure::Answer(
                codes::LIMIT,
                format!("at most {max} streams per connection"),
            ));
        }
        let Some(callee) = routes.conns.get_mut(&target) else {
            return Err(Failure::Answer(codes::PEER_GONE, "provider gone".into()));
        };
        let hub_channel = callee.next_request_id() | HUB_STREAM_BIT;
        callee.streams += 1;
        let forwarded = StreamOpen {
            method: open.method,
            params: open.params,
            session: (callee.side == Side::Host).then(|| session.clone()),
        };
        callee.outbox.send(
            Frame::json(Kind::StreamOpen, hub_channel, &forwarded),
            &self.inner.peak,
        );
        if let Some(c) = routes.conns.get_mut(&id) {
            c.streams += 1;
        }
        let window = u64::from(limits.initial_window);
        routes.streams.insert(
            (id, channel),
            StreamLeg {
                peer: Some((target, hub_channel)),
                may_send: window,
                closed: false,
            },
        );
        routes.streams.insert(
            (target, hub_channel),
            StreamLeg {
                peer: Some((id, channel)),
                may_send: window,
                closed: false,
            },
        );
        Ok(())
    }

    pub(super) fn stream_data(
        &self,
        id: ConnId,
        frame: Frame,
    ) -> Result<(), (&'static str, String)> {
        let mut routes = lock(&self.inner.routes);
        let leg = routes.streams.get_mut(&(id, frame.channel)).ok_or((
            codes::UNEXPECTED_FRAME,
            format!("data on stream {} which is not open", frame.channel),
        ))?;
        if leg.closed {
            return Err((
                codes::UNEXPECTED_FRAME,
                format!("data on stream {} after its close", frame.channel),
            ));
        }
        let len = frame.payload.len() as u64;
        if len > leg.may_send {
            return Err((
                codes::FLOW_CONTROL,
                format!(
                    "{len} bytes on stream {} over its credit of {}",
                    frame.channel, leg.may_send
                ),
            ));
        }
        leg.may_send -= len;
        let peer = leg.peer;
        self.inner.stream_bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(peer) = peer
            && let Some(c) = routes.conns.get(&peer.0)
        {
            c.outbox.send(
                Frame::new(Kind::StreamData, peer.1, frame.payload),
                &self.inner.peak,
            );
        }
        Ok(())
    }

    pub(super) fn stream_credit(
        &self,
        id: ConnId,
        frame: Frame,
    ) -> Result<(), (&'static str, String)> {
        let grant: [u8; 4] = frame.payload[..].try_into().map_err(|_| {
            (
                codes::INVALID_ARGUMENT,
                "a credit frame carries 4 bytes".to_owned(),
            )
        })?;
        let grant = u64::from(u32::from_be_bytes(grant));
        let max = u64::from(self.inner.limits.max_window);
        let mut routes = lock(&self.inner.routes);
        // Credit for a stream that has just ended crosses its close on the
        // way: it is dropped, never an error.
        let Some(leg) = routes.streams.get(&(id, frame.channel)) else {
            return Ok(());
        };
        let Some(peer) = leg.peer else {
            return Ok(());
        };
        let Some(sender) = routes.streams.get_mut(&peer) else {
            return Ok(());
        };
        if sender.may_send + grant > max {
            return Err((
                codes::FLOW_CONTROL,
                format!(
                    "credit on stream {} over the window of {max}",
                    frame.channel
                ),
            ));
        }
        sender.may_send += grant;
        if let Some(c) = routes.conns.get(&peer.0) {
            c.outbox.send(
                Frame::new(
                    Kind::StreamCredit,
                    peer.1,
                    Bytes::copy_from_slice(&grant_bytes(grant)),
                ),
                &self.inner.peak,
            );
        }
        Ok(())
    }

    pub(super) fn stream_close(
        &self,
        id: ConnId,
        frame: Frame,
    ) -> Result<(), (&'static str, String)> {
        if !frame.payload.is_empty() {
            serde_json::from_slice::<ErrorBody>(&frame.payload)
                .map_err(|e| (codes::BAD_JSON, format!("stream_close: {e}")))?;
        }
        let mut routes = lock(&self.inner.routes);
        let leg = routes.streams.get_mut(&(id, frame.channel)).ok_or((
            codes::UNEXPECTED_FRAME,
            format!("close of stream {} which is not open", frame.channel),
        ))?;
        if leg.closed {
            return Err((
                codes::UNEXPECTED_FRAME,
                format!("second close of stream {}", frame.channel),
            ));
        }
        leg.closed = true;
        let peer = leg.peer;
        let mut gone = vec![(id, frame.channel)];
        if let Some(peer) = peer {
            if routes.streams.get(&peer).is_some_and(|p| p.closed) {
                gone.push(peer);
            }
            if let Some(c) = routes.conns.get(&peer.0) {
                c.outbox.send(
                    Frame::new(Kind::StreamClose, peer.1, frame.payload),
                    &self.inner.peak,
                );
            }
        }
        if gone.len() == 2 || peer.is_none() {
            for leg in gone {
                routes.streams.remove(&leg);
                if let Some(c) = routes.conns.get_mut(&leg.0) {
                    c.streams = c.streams.saturating_sub(1);
                }
            }
        }
        Ok(())
    }
}

fn grant_bytes(grant: u64) -> [u8; 4] {
    (grant.min(u64::from(u32::MAX)) as u32).to_be_bytes()
}
