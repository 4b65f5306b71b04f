//! Admission before authentication, after OpenSSH 9.8's sshd: what the
//! accept loop asks before a connection gets a task of its own.
//!
//! - **MaxStartups** (`max_startups = "start:rate:full"`): connections not
//!   yet authenticated, in total. Below `start` all are admitted; from
//!   `start` on a new one is dropped with a probability rising linearly from
//!   `rate`% to 100% at `full`.
//! - **PerSourceMaxStartups** (`per_source_max_startups`): connections not
//!   yet authenticated from one network block (`per_source_net_block_size`,
//!   `"32:128"`: one IPv4 address, one IPv6 address).
//! - **PerSourcePenalties**: a block whose connections fail authentication,
//!   close without authenticating or overstay the login grace time accrues
//!   penalty seconds; once its penalty passes `penalty_min_secs` it is
//!   refused at accept until the penalty has decayed (real time). Exempt
//!   networks never accrue any. At most `penalty_max_sources` blocks are
//!   tracked; past that the soonest to expire are forgotten.
//!
//! A connection admitted holds a [`Startup`] until it authenticates (the
//! counts drop, nothing is held against the source) or ends without doing
//! so (the counts drop and its source is penalized for how it ended).
//! Everything here is a few map operations under one lock: the accept loop
//! never waits.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::Limits;

/// `MaxStartups start:rate:full` (sshd_config(5)); a single number `n`
/// means `n:100:n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MaxStartups {
    pub start: usize,
    /// Percent dropped at `start`.
    pub rate: u32,
    pub full: usize,
}

impl MaxStartups {
    /// The chance, in percent, that a new connection is dropped while
    /// `startups` unauthenticated connections are open (OpenSSH's
    /// `drop_connection`).
    pub fn drop_percent(&self, startups: usize) -> u32 {
        if startups < self.start {
            0
        } else if startups >= self.full {
            100
        } else {
            let span = (self.full - self.start) as u64;
            let past = (startups - self.start) as u64;
            let rate = u64::from(self.rate);
            (rate + (100 - rate) * past / span) as u32
        }
    }
}

impl FromStr for MaxStartups {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "max_startups {text:?} is not \"start:rate:full\" (e.g. \"10:30:100\") or one number"
            )
        };
        let numbers: Vec<&str> = text.split(':').collect();
        let parsed = match numbers.as_slice() {
            [n] => {
                let n: usize = n.trim().parse().map_err(|_| bad())?;
                Self {
                    start: n,
                    rate: 100,
                    full: n,
                }
            }
            [start, rate, full] => Self {
                start: start.trim().parse().map_err(|_| bad())?,
                rate: rate.trim().parse().map_err(|_| bad())?,
                full: full.trim().parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        if parsed.full == 0 || parsed.start > parsed.full {
            return Err(format!(
                "max_startups {text:?}: full must be at least 1 and start at most full"
            ));
        }
        if !(1..=100).contains(&parsed.rate) {
            return Err(format!(
                "max_startups {text:?}: rate must be a percentage from 1 to 100"
            ));
        }
        Ok(parsed)
    }
}

impl TryFrom<String> for MaxStartups {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for MaxStartups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start, self.rate, self.full)
    }
}

/// `PerSourceNetBlockSize v4[:v6]`: the prefix lengths that group source
/// addresses into one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NetBlockSize {
    pub v4: u8,
    pub v6: u8,
}

impl NetBlockSize {
    /// The block `peer` belongs to (IPv4-mapped IPv6 addresses count as
    /// IPv4).
    pub fn block(&self, peer: IpAddr) -> IpAddr {
        let peer = peer.to_canonical();
        let len = if peer.is_ipv4() { self.v4 } else { self.v6 };
        mask(peer, len)
    }

    fn len_for(&self, peer: IpAddr) -> u8 {
        if peer.is_ipv4() { self.v4 } else { self.v6 }
    }
}

impl FromStr for NetBlockSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "per_source_net_block_size {text:?} is not \"v4[:v6]\" with v4 at most 32 and v6 at most 128"
            )
        };
        let (v4, v6) = match text.split_once(':') {
            Some((v4, v6)) => (v4, v6),
            None => (text, "128"),
        };
        let v4: u8 = v4.trim().parse().map_err(|_| bad())?;
        let v6: u8 = v6.trim().parse().map_err(|_| bad())?;
        if v4 > 32 || v6 > 128 {
            return Err(bad());
        }
        Ok(Self { v4, v6 })
    }
}

impl TryFrom<String> for NetBlockSize {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// An address or a CIDR network (`192.0.2.0/24`, `2001:db8::/32`), for
/// `penalty_exempt`. Bits past the prefix must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Network {
    addr: IpAddr,
    len: u8,
}

impl Network {
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        peer.is_ipv4() == self.addr.is_ipv4() && mask(peer, self.len) == self.addr
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an address or a CIDR network");
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(len) => len.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if len > max {
            return Err(bad());
        }
        if mask(addr, len) != addr {
            return Err(format!(
                "{text:?} has address bits set past its /{len} prefix (did you mean {}/{len}?)",
                mask(addr, len)
            ));
        }
        Ok(Self { addr, len })
    }
}

impl TryFrom<String> for Network {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `addr` with all but its first `len` bits cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// How a connection ended without authenticating: what its source is
/// penalized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It tried keys and none was accepted.
    AuthFailed,
    /// It closed without trying to authenticate.
    NoAuth,
    /// It was still unauthenticated at the login grace time.
    GraceExceeded,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "authentication failed",
            Self::NoAuth => "closed without authenticating",
            Self::GraceExceeded => "login grace time exceeded",
        }
    }
}

/// Why a connection is refused at accept.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The source's block is serving a penalty.
    Penalty {
        block: IpAddr,
        block_len: u8,
        remaining: Duration,
        reason: Outcome,
    },
    /// The block already has `per_source_max_startups` unauthenticated
    /// connections.
    PerSource {
        block: IpAddr,
        block_len: u8,
        startups: usize,
    },
    /// Random early drop (`max_startups`).
    Startups { startups: usize, percent: u32 },
}

impl Refusal {
    /// The short reason, for the log's `reason` field.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Penalty { .. } => "penalty",
            Self::PerSource { .. } => "per_source_max_startups",
            Self::Startups { .. } => "max_startups",
        }
    }

    /// The line the client is sent before the connection closes (before
    /// the version exchange: RFC 4253 4.2 allows other lines first).
    pub fn client_line(&self) -> &'static str {
        match self {
            Self::Penalty { .. } => {
                "blink: too many failed or abandoned logins from your address; try again later\r\n"
            }
            Self::PerSource { .. } => {
                "blink: too many unauthenticated connections from your address; try again later\r\n"
            }
            Self::Startups { .. } => {
                "blink: too many unauthenticated connections; try again later\r\n"
            }
        }
    }

    /// One structured line.
    pub fn log(&self, peer: std::net::SocketAddr) {
        let reason = self.reason();
        match self {
            Self::Penalty {
                block,
                block_len,
                remaining,
                reason: why,
            } => tracing::info!(
                target: "blink::ssh::admission",
                %peer,
                reason,
                source = %format_args!("{block}/{block_len}"),
                penalty = why.as_str(),
                penalty_secs_left = remaining.as_secs(),
                "ssh connection refused"
            ),
            Self::PerSource {
                block,
                block_len,
                startups,
            } => tracing::info!(
                target: "blink::ssh::admission",
                %peer,
                reason,
                source = %format_args!("{block}/{block_len}"),
                startups,
                "ssh connection refused"
            ),
            Self::Startups { startups, percent } => tracing::info!(
                target: "blink::ssh::admission",
                %peer,
                reason,
                startups,
                drop_percent = percent,
                "ssh connection refused"
            ),
        }
    }
}

/// Refusal lines logged at most this many a second; past that, refusals
/// are counted by reason and the counts logged in one line before the
/// next refusal line (a flood must not flood the log too).
const REFUSAL_LINES_PER_SEC: u32 = 20;

/// The accept loop's log of refusals: one line each, up to
/// [`REFUSAL_LINES_PER_SEC`].
#[derive(Debug, Default)]
pub struct RefusalLog {
    window: Option<Instant>,
    lines: u32,
    suppressed: std::collections::BTreeMap<&'static str, u64>,
}

impl RefusalLog {
    /// Whether a refusal for `reason` gets its own line now (else it is
    /// counted).
    pub fn line_allowed(&mut self, reason: &'static str) -> bool {
        self.line_allowed_at(reason, Instant::now())
    }

    fn line_allowed_at(&mut self, reason: &'static str, now: Instant) -> bool {
        let new_window = self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1));
        if new_window {
            self.flush();
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines < REFUSAL_LINES_PER_SEC {
            self.lines += 1;
            return true;
        }
        *self.suppressed.entry(reason).or_insert(0) += 1;
        false
    }

    /// Log the refusals counted without a line, if any.
    fn flush(&mut self) {
        if self.suppressed.is_empty() {
            return;
        }
        let total: u64 = self.suppressed.values().sum();
        let by_reason = self
            .suppressed
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(
            target: "blink::ssh::admission",
            refused = total,
            by_reason = %by_reason,
            "ssh connections refused without a line each (over {REFUSAL_LINES_PER_SEC} a second)"
        );
        self.suppressed.clear();
    }

    /// Log `refusal` (or count it, past the rate).
    pub fn refused(&mut self, peer: std::net::SocketAddr, refusal: &Refusal) {
        if self.line_allowed(refusal.reason()) {
            refusal.log(peer);
        }
    }
}

/// What a penalty added to a source came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalized {
    pub block: IpAddr,
    pub block_len: u8,
    /// The penalty now left to serve.
    pub remaining: Duration,
    /// Whether the source is refused from now on (until it decays).
    pub active: bool,
    /// Whether this penalty is the one that made it so.
    pub newly_active: bool,
}

/// The penalty settings, in durations.
#[derive(Debug, Clone)]
struct PenaltyRules {
    enabled: bool,
    authfail: Duration,
    noauth: Duration,
    grace_exceeded: Duration,
    min: Duration,
    max: Duration,
    max_sources: usize,
    exempt: Vec<Network>,
}

impl PenaltyRules {
    fn for_outcome(&self, outcome: Outcome) -> Duration {
        match outcome {
            Outcome::AuthFailed => self.authfail,
            Outcome::NoAuth => self.noauth,
            Outcome::GraceExceeded => self.grace_exceeded,
        }
    }

    fn exempt(&self, peer: IpAddr) -> bool {
        self.exempt.iter().any(|n| n.contains(peer))
    }
}

/// The gateway's admission state, shared by the accept loop and every
/// connection not yet authenticated.
#[derive(Debug)]
pub struct Admission {
    max_startups: MaxStartups,
    per_source_max: usize,
    net_block: NetBlockSize,
    rules: PenaltyRules,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Unauthenticated connections in total.
    startups: usize,
    /// Unauthenticated connections per block (blocks with none are removed).
    per_source: HashMap<IpAddr, usize>,
    penalties: Penalties,
}

impl Admission {
    pub fn new(limits: &Limits) -> Arc<Self> {
        let secs = Duration::from_secs;
        Arc::new(Self {
            max_startups: limits.max_startups,
            per_source_max: limits.per_source_max_startups,
            net_block: limits.per_source_net_block_size,
            rules: PenaltyRules {
                enabled: limits.per_source_penalties,
                authfail: secs(limits.penalty_authfail_secs),
                noauth: secs(limits.penalty_noauth_secs),
                grace_exceeded: secs(limits.penalty_grace_exceeded_secs),
                min: secs(limits.penalty_min_secs),
                max: secs(limits.penalty_max_secs),
                max_sources: limits.penalty_max_sources.max(1),
                exempt: limits.penalty_exempt.clone(),
            },
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit a new connection from `peer`, or say why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Startup, Refusal> {
        self.admit_at(peer, Instant::now(), |percent| {
            rand::random_range(0..100u32) < percent
        })
    }

    /// [`Admission::admit`] at `now`, with `drop` rolling the dice for a
    /// drop percentage.
    fn admit_at(
        self: &Arc<Self>,
        peer: IpAddr,
        now: Instant,
        drop: impl FnOnce(u32) -> bool,
    ) -> Result<Startup, Refusal> {
        let peer = peer.to_canonical();
        let block = self.net_block.block(peer);
        let block_len = self.net_block.len_for(peer);
        let mut state = self.lock();
        if self.rules.enabled
            && !self.rules.exempt(peer)
            && let Some((remaining, reason)) = state.penalties.active(block, now)
        {
            return Err(Refusal::Penalty {
                block,
                block_len,
                remaining,
                reason,
            });
        }
        let from_block = state.per_source.get(&block).copied().unwrap_or(0);
        if self.per_source_max > 0 && from_block >= self.per_source_max {
            return Err(Refusal::PerSource {
                block,
                block_len,
                startups: from_block,
            });
        }
        let percent = self.max_startups.drop_percent(state.startups);
        if percent >= 100 || (percent > 0 && drop(percent)) {
            return Err(Refusal::Startups {
                startups: state.startups,
                percent,
            });
        }
        state.startups += 1;
        *state.per_source.entry(block).or_insert(0) += 1;
        Ok(Startup {
            admission: self.clone(),
            peer,
            block,
            counted: true,
        })
    }

    /// Unauthenticated connections open now: in total, and from `peer`'s
    /// block.
    #[cfg(test)]
    fn startups(&self, peer: IpAddr) -> (usize, usize) {
        let state = self.lock();
        let block = self.net_block.block(peer);
        (
            state.startups,
            state.per_source.get(&block).copied().unwrap_or(0),
        )
    }

    fn release(&self, block: IpAddr) {
        let mut state = self.lock();
        state.startups = state.startups.saturating_sub(1);
        if let Some(n) = state.per_source.get_mut(&block) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_source.remove(&block);
            }
        }
    }

    /// Add the penalty for `outcome` to `peer`'s block.
    fn penalize(&self, peer: IpAddr, outcome: Outcome, now: Instant) -> Option<Penalized> {
        let rules = &self.rules;
        if !rules.enabled || rules.exempt(peer) {
            return None;
        }
        let secs = rules.for_outcome(outcome);
        if secs.is_zero() {
            return None;
        }
        let block = self.net_block.block(peer);
        let (remaining, active, newly_active) =
            self.lock().penalties.add(block, secs, outcome, rules, now);
        Some(Penalized {
            block,
            block_len: self.net_block.len_for(peer),
            remaining,
            active,
            newly_active,
        })
    }
}

/// One unauthenticated connection's place in the counts. Dropped (server
/// shutting down, connection refused over another limit), it frees its
/// place and penalizes nobody.
#[derive(Debug)]
pub struct Startup {
    admission: Arc<Admission>,
    peer: IpAddr,
    block: IpAddr,
    counted: bool,
}

impl Startup {
    fn release(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.admission.release(self.block);
        }
    }

    /// The connection authenticated: it no longer counts, and its source
    /// owes nothing for it.
    pub fn authenticated(mut self) {
        self.release();
    }

    /// The connection ended without authenticating: free its place and
    /// penalize its source (unless exempt or penalties are off).
    pub fn ended(mut self, outcome: Outcome) -> Option<Penalized> {
        self.release();
        self.admission.penalize(self.peer, outcome, Instant::now())
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        self.release();
    }
}

/// A connection's standing until it authenticates, shared by its
/// handler (answers to attempts) and its task (the grace timer, the end):
/// its [`Startup`], the attempts refused, whether the grace time passed.
/// Used by nodes (`connection.rs`) and routers (`router/ssh.rs`) alike.
#[derive(Debug)]
pub struct Pending {
    startup: Mutex<Option<Startup>>,
    auth_failures: std::sync::atomic::AtomicU32,
    grace_exceeded: std::sync::atomic::AtomicBool,
    authenticated: std::sync::atomic::AtomicBool,
}

impl Pending {
    pub fn new(startup: Startup) -> Self {
        Self {
            startup: Mutex::new(Some(startup)),
            auth_failures: Default::default(),
            grace_exceeded: Default::default(),
            authenticated: Default::default(),
        }
    }

    fn take(&self) -> Option<Startup> {
        self.startup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// A verified login: its place is freed, its source owes nothing.
    pub fn authenticated(&self) {
        self.authenticated
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(startup) = self.take() {
            startup.authenticated();
        }
    }

    /// Whether it logged in.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// An attempt refused (counts towards its source's penalty).
    pub fn auth_refused(&self) {
        self.auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Still unauthenticated at the login grace time.
    pub fn grace_exceeded(&self) {
        self.grace_exceeded
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closed by the server (a shutdown): its place is freed, nothing is
    /// held against its source.
    pub fn released(&self) {
        drop(self.take());
    }

    /// The connection ended: if it never authenticated, its source is
    /// penalized for how, with a log line when that makes it refused.
    pub fn ended(&self, peer: std::net::SocketAddr) {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(startup) = self.take() else {
            return;
        };
        let outcome = if self.grace_exceeded.load(SeqCst) {
            Outcome::GraceExceeded
        } else if self.auth_failures.load(SeqCst) > 0 {
            Outcome::AuthFailed
        } else {
            Outcome::NoAuth
        };
        let Some(p) = startup.ended(outcome) else {
            return;
        };
        let source = format_args!("{}/{}", p.block, p.block_len);
        if p.newly_active {
            tracing::info!(
                target: "blink::ssh::admission",
                %peer,
                %source,
                penalty = outcome.as_str(),
                penalty_secs = p.remaining.as_secs(),
                "ssh source penalized: refused until its penalty ends"
            );
        } else {
            tracing::debug!(
                target: "blink::ssh::admission",
                %peer,
                %source,
                penalty = outcome.as_str(),
                penalty_secs = p.remaining.as_secs(),
                active = p.active,
                "ssh source penalty"
            );
        }
    }
}

impl super::cuttable::Authenticated for Pending {
    fn authenticated(&self) -> bool {
        self.is_authenticated()
    }
}

/// The penalty box: per block, when its penalty ends and whether it is
/// enforced, with an index by expiry to forget the soonest-expiring first.
#[derive(Debug, Default)]
struct Penalties {
    by_block: HashMap<IpAddr, Penalty>,
    by_expiry: BTreeSet<(Instant, IpAddr)>,
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    expiry: Instant,
    /// Enforced: it passed the minimum once, and stays so until it ends.
    active: bool,
    reason: Outcome,
}

impl Penalties {
    /// Forget penalties that have ended.
    fn expire(&mut self, now: Instant) {
        while let Some(&(expiry, block)) = self.by_expiry.first() {
            if expiry > now {
                break;
            }
            self.by_expiry.pop_first();
            self.by_block.remove(&block);
        }
    }

    /// The penalty `block` is serving now, if enforced: time left, reason.
    fn active(&mut self, block: IpAddr, now: Instant) -> Option<(Duration, Outcome)> {
        self.expire(now);
        let p = self.by_block.get(&block)?;
        p.active
            .then(|| (p.expiry.saturating_duration_since(now), p.reason))
    }

    /// Add `secs` to `block`'s penalty, at most `rules.max` in all (as
    /// OpenSSH's `srclimit_penalise`): a new penalty runs from now, an
    /// existing one is extended from its end. Returns the time left and
    /// whether it is enforced (and newly so).
    fn add(
        &mut self,
        block: IpAddr,
        secs: Duration,
        reason: Outcome,
        rules: &PenaltyRules,
        now: Instant,
    ) -> (Duration, bool, bool) {
        self.expire(now);
        let cap = now.checked_add(rules.max).unwrap_or(now);
        let (penalty, newly_active) = match self.by_block.get(&block).copied() {
            None => {
                let expiry = now.checked_add(secs).unwrap_or(cap).min(cap);
                let active = expiry.saturating_duration_since(now) > rules.min;
                (
                    Penalty {
                        expiry,
                        active,
                        reason,
                    },
                    active,
                )
            }
            Some(old) => {
                self.by_expiry.remove(&(old.expiry, block));
                let expiry = old.expiry.checked_add(secs).unwrap_or(cap).min(cap);
                let active = old.active || expiry.saturating_duration_since(now) > rules.min;
                (
                    Penalty {
                        expiry,
                        active,
                        reason,
                    },
                    active && !old.active,
                )
            }
        };
        if penalty.expiry <= now {
            // Nothing to serve (a zero maximum).
            self.by_block.remove(&block);
            return (Duration::ZERO, false, false);
        }
        self.by_block.insert(block, penalty);
        self.by_expiry.insert((penalty.expiry, block));
        // Bounded memory: forget the penalties that end soonest.
        while self.by_block.len() > rules.max_sources {
            let Some((_, gone)) = self.by_expiry.pop_first() else {
                break;
            };
            self.by_block.remove(&gone);
        }
        match self.by_block.get(&block) {
            Some(p) => (
                p.expiry.saturating_duration_since(now),
                p.active,
                newly_active,
            ),
            None => (Duration::ZERO, false, false),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.by_block.len(), self.by_expiry.len());
        self.by_block.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn limits(f: impl FnOnce(&mut Limits)) -> Arc<Admission> {
        let mut limits = Limits::default();
        f(&mut limits);
        Admission::new(&limits)
    }

    const NEVER: fn(u32) -> bool = |_| false;
    const ALWAYS: fn(u32) -> bool = |_| true;

    #[test]
    fn max_startups_parse_and_drop_curve() {
        let m: MaxStartups = "10:30:100".parse().unwrap();
        assert_eq!(
            m,
            MaxStartups {
                start: 10,
                rate: 30,
                full: 100
            }
        );
        assert_eq!(m.to_string(), "10:30:100");
        assert_eq!(m.drop_percent(0), 0);
        assert_eq!(m.drop_percent(9), 0);
        assert_eq!(m.drop_percent(10), 30);
        assert_eq!(m.drop_percent(55), 65);
        assert_eq!(m.drop_percent(99), 99);
        assert_eq!(m.drop_percent(100), 100);
        assert_eq!(m.drop_percent(1000), 100);
        let single: MaxStartups = "5".parse().unwrap();
        assert_eq!((single.drop_percent(4), single.drop_percent(5)), (0, 100));
        for bad in [
            "",
            "a",
            "10:30",
            "10:0:100",
            "10:101:100",
            "20:30:10",
            "0",
            "1:2:3:4",
        ] {
            assert!(bad.parse::<MaxStartups>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn net_blocks_and_networks() {
        let b: NetBlockSize = "24:64".parse().unwrap();
        assert_eq!(b.block(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(b.block(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(b.block(ip("2001:db8:1:2:3::4")), ip("2001:db8:1:2::"));
        let whole: NetBlockSize = "0:0".parse().unwrap();
        assert_eq!(whole.block(ip("203.0.113.9")), ip("0.0.0.0"));
        assert_eq!("16".parse::<NetBlockSize>().unwrap().v6, 128);
        for bad in ["33", "32:129", "x", "-1:0"] {
            assert!(bad.parse::<NetBlockSize>().is_err(), "{bad:?}");
        }
        let n: Network = "127.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("127.0.0.2")) && n.contains(ip("::ffff:127.9.9.9")));
        assert!(!n.contains(ip("128.0.0.1")) && !n.contains(ip("::1")));
        let one: Network = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert!("127.0.0.1/8".parse::<Network>().is_err());
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("host.example".parse::<Network>().is_err());
    }

    #[test]
    fn per_source_cap_counts_blocks_until_authenticated() {
        let a = limits(|l| {
            l.per_source_max_startups = 2;
            l.per_source_net_block_size = "24:128".parse().unwrap();
        });
        let now = Instant::now();
        let s1 = a.admit_at(ip("192.0.2.1"), now, NEVER).unwrap();
        let s2 = a.admit_at(ip("192.0.2.2"), now, NEVER).unwrap();
        let refused = a.admit_at(ip("192.0.2.3"), now, NEVER).unwrap_err();
        assert_eq!(refused.reason(), "per_source_max_startups");
        // Another block is not affected.
        let other = a.admit_at(ip("198.51.100.1"), now, NEVER).unwrap();
        assert_eq!(a.startups(ip("192.0.2.9")), (3, 2));
        s1.authenticated();
        let s3 = a.admit_at(ip("192.0.2.3"), now, NEVER).unwrap();
        drop((s2, s3, other));
        assert_eq!(a.startups(ip("192.0.2.9")), (0, 0));
        assert!(a.lock().per_source.is_empty());
    }

    #[test]
    fn random_early_drop_between_start_and_full() {
        let a = limits(|l| {
            l.max_startups = "2:50:4".parse().unwrap();
            l.per_source_max_startups = 0;
        });
        let now = Instant::now();
        let peer = ip("192.0.2.1");
        let held: Vec<_> = (0..2)
            .map(|_| a.admit_at(peer, now, ALWAYS).unwrap())
            .collect();
        // At start: the dice decide, at 50%.
        let mut asked = None;
        let refused = a
            .admit_at(peer, now, |p| {
                asked = Some(p);
                true
            })
            .unwrap_err();
        assert_eq!(asked, Some(50));
        assert_eq!(
            refused,
            Refusal::Startups {
                startups: 2,
                percent: 50
            }
        );
        let third = a.admit_at(peer, now, NEVER).unwrap();
        let fourth = a.admit_at(peer, now, NEVER).unwrap();
        // At full: everything is dropped, whatever the dice say.
        assert!(a.admit_at(peer, now, NEVER).is_err());
        drop((held, third, fourth));
        assert!(a.admit_at(peer, now, ALWAYS).is_ok());
    }

    #[test]
    fn penalties_accrue_refuse_past_min_and_decay() {
        let a = limits(|l| {
            l.penalty_authfail_secs = 5;
            l.penalty_min_secs = 15;
            l.penalty_max_secs = 30;
        });
        let peer = ip("192.0.2.1");
        let t0 = Instant::now();
        let fail = |at: Instant| a.penalize(peer, Outcome::AuthFailed, at).unwrap();
        // 5, 10, 15: not past the minimum yet.
        for n in 1..=3u64 {
            let p = fail(t0);
            assert_eq!(p.remaining, Duration::from_secs(5 * n));
            assert!(!p.active);
        }
        assert!(a.admit_at(peer, t0, NEVER).is_ok());
        let p = fail(t0);
        assert!(p.active && p.newly_active);
        let refused = a.admit_at(peer, t0, NEVER).unwrap_err();
        assert!(matches!(
            refused,
            Refusal::Penalty { remaining, reason: Outcome::AuthFailed, .. } if remaining == Duration::from_secs(20)
        ));
        // Capped at the maximum.
        for _ in 0..10 {
            fail(t0);
        }
        assert_eq!(fail(t0).remaining, Duration::from_secs(30));
        // Another address is not affected; the penalty decays in real time.
        assert!(a.admit_at(ip("192.0.2.2"), t0, NEVER).is_ok());
        let later = t0 + Duration::from_secs(29);
        assert!(a.admit_at(peer, later, NEVER).is_err());
        let after = t0 + Duration::from_secs(30);
        assert!(a.admit_at(peer, after, NEVER).is_ok());
        assert_eq!(a.lock().penalties.len(), 0);
    }

    #[test]
    fn an_active_penalty_stays_enforced_until_it_ends() {
        let a = limits(|l| {
            l.penalty_noauth_secs = 1;
            l.penalty_grace_exceeded_secs = 20;
            l.penalty_min_secs = 15;
        });
        let peer = ip("2001:db8::1");
        let t0 = Instant::now();
        assert!(
            a.penalize(peer, Outcome::GraceExceeded, t0)
                .unwrap()
                .newly_active
        );
        // Below the minimum again but not over: still refused.
        let t1 = t0 + Duration::from_secs(10);
        assert!(a.admit_at(peer, t1, NEVER).is_err());
        let p = a.penalize(peer, Outcome::NoAuth, t1).unwrap();
        assert!(p.active && !p.newly_active);
        assert_eq!(p.remaining, Duration::from_secs(11));
    }

    #[test]
    fn exempt_and_disabled_sources_accrue_nothing() {
        let a = limits(|l| {
            l.penalty_exempt = vec!["192.0.2.0/24".parse().unwrap()];
            l.penalty_min_secs = 0;
        });
        let t0 = Instant::now();
        assert!(
            a.penalize(ip("192.0.2.7"), Outcome::AuthFailed, t0)
                .is_none()
        );
        assert!(a.admit_at(ip("192.0.2.7"), t0, NEVER).is_ok());
        assert!(
            a.penalize(ip("192.0.3.7"), Outcome::AuthFailed, t0)
                .is_some()
        );
        assert!(a.admit_at(ip("192.0.3.7"), t0, NEVER).is_err());
        let off = limits(|l| {
            l.per_source_penalties = false;
            l.penalty_min_secs = 0;
        });
        assert!(
            off.penalize(ip("192.0.3.7"), Outcome::AuthFailed, t0)
                .is_none()
        );
        assert!(off.admit_at(ip("192.0.3.7"), t0, NEVER).is_ok());
    }

    #[test]
    fn tracked_sources_are_bounded_soonest_expiring_forgotten_first() {
        let a = limits(|l| {
            l.penalty_max_sources = 3;
            l.penalty_min_secs = 0;
            l.penalty_authfail_secs = 100;
            l.penalty_max_secs = 1000;
        });
        let t0 = Instant::now();
        for i in 1..=10u8 {
            let at = t0 + Duration::from_secs(u64::from(i));
            a.penalize(IpAddr::from([192, 0, 2, i]), Outcome::AuthFailed, at);
            assert!(a.lock().penalties.len() <= 3);
        }
        let now = t0 + Duration::from_secs(10);
        // The three latest are still there; the first are forgotten.
        assert!(a.admit_at(ip("192.0.2.10"), now, NEVER).is_err());
        assert!(a.admit_at(ip("192.0.2.8"), now, NEVER).is_err());
        assert!(a.admit_at(ip("192.0.2.1"), now, NEVER).is_ok());
    }

    #[test]
    fn refusal_lines_are_rate_limited_and_the_rest_counted() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let allowed = (0..100)
            .filter(|_| log.line_allowed_at("penalty", t0))
            .count();
        assert_eq!(allowed, REFUSAL_LINES_PER_SEC as usize);
        assert_eq!(log.suppressed.get("penalty"), Some(&80));
        // A new second: lines again, the count logged and reset.
        assert!(log.line_allowed_at("max_startups", t0 + Duration::from_secs(1)));
        assert!(log.suppressed.is_empty());
    }

    #[test]
    fn startup_ending_without_auth_penalizes_its_source() {
        let a = limits(|l| {
            l.penalty_noauth_secs = 20;
            l.penalty_min_secs = 15;
        });
        let peer = ip("198.51.100.4");
        let s = a.admit(peer).unwrap();
        let p = s.ended(Outcome::NoAuth).unwrap();
        assert!(p.newly_active);
        assert_eq!(a.startups(peer), (0, 0));
        assert_eq!(a.admit(peer).unwrap_err().reason(), "penalty");
        // An authenticated one costs nothing.
        let fresh = ip("198.51.100.5");
        a.admit(fresh).unwrap().authenticated();
        assert!(a.admit(fresh).is_ok());
    }
}
