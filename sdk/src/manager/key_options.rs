//! The options in front of a key in an OpenSSH `authorized_keys` line
//! (sshd(8), "AUTHORIZED_KEYS FILE FORMAT"), parsed the way OpenSSH's
//! `auth-options.c` parses them: comma-separated, names case-insensitive,
//! values in double quotes where `\"` is a quote.
//!
//! Every option Blink accepts is enforced; any other option, known to
//! OpenSSH or not, makes the key invalid, so a restriction is never
//! dropped in silence. The rules live here, once: surfaces ask
//! [`KeyOptions::check_login`] at authentication and the other accessors
//! when a channel starts.
//!
//! | Option | Effect |
//! |--------|--------|
//! | `from="pattern-list"` | login only from matching client addresses |
//! | `expiry-time="YYYYMMDD[HHMM[SS]][Z]"` | no login after that time |
//! | `command="cmd"` | every exec and shell runs `cmd` instead |
//! | `environment="NAME=value"` | set in every program the key starts |
//! | `restrict` | no PTY, no forwarding of any kind, no user rc |
//! | `[no-]pty`, `[no-]port-forwarding`, `[no-]agent-forwarding`, `[no-]X11-forwarding`, `[no-]user-rc` | as in OpenSSH |
//! | `permitopen="host:port"` | `ssh -L`/`-D` only to these (host as the client names it, port or `*`) |
//! | `permitlisten="[host:]port"` | `ssh -R` only on these (host a pattern, port or `*`) |
//!
//! An OpenSSH user certificate carries its restrictions as critical
//! options and its permissions as extensions (PROTOCOL.certkeys);
//! [`KeyOptions::from_certificate`] turns them into the same options, so a
//! certificate goes through the same checks as a key line, and refuses a
//! critical option it cannot enforce, as OpenSSH's sshd does.
//! [`KeyOptions::merge`] joins two sets (a login's and what an auth hook
//! adds), keeping the restrictions of both.

use std::fmt;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// At most this many `environment=` options per key (OpenSSH's limit).
const MAX_ENVIRONMENT: usize = 1024;

/// A forced command that serves SFTP only (OpenSSH's in-process server).
pub const INTERNAL_SFTP: &str = "internal-sftp";

/// One option, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOption {
    Restrict,
    Pty(bool),
    PortForwarding(bool),
    AgentForwarding(bool),
    X11Forwarding(bool),
    UserRc(bool),
    Command(String),
    From(FromList),
    ExpiryTime {
        /// As written, e.g. `20300101` or `203001011200Z`.
        text: String,
        /// Seconds since the epoch.
        at: i64,
    },
    Environment {
        name: String,
        value: String,
    },
    /// `permitopen=`: where `ssh -L`/`-D` may connect.
    PermitOpen(Permit),
    /// `permitlisten=`: where `ssh -R` may listen.
    PermitListen(Permit),
}

/// One `permitopen=` or `permitlisten=` entry, parsed as OpenSSH's
/// `auth-options.c` does: `host:port`, `[v6-address]:port` (or `/` for the
/// colon); the port a number or `*` for any; a bare port in
/// `permitlisten=` means any host (`*:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// As written.
    text: String,
    host: String,
    /// `None`: any port (`*`).
    port: Option<u16>,
}

impl Permit {
    fn parse(option: &str, text: &str, bare_port: bool) -> Result<Self> {
        let bad = |why: &str| {
            invalid(format!(
                "key option {option:?}: {text:?} has {why}; expected host:port, the port 1-65535 or *"
            ))
        };
        let full = if bare_port && !text.contains(':') {
            format!("*:{text}")
        } else {
            text.to_string()
        };
        let (host, port) = if let Some(rest) = full.strip_prefix('[') {
            let Some((host, tail)) = rest.split_once(']') else {
                return Err(bad("an unclosed ["));
            };
            let Some(port) = tail.strip_prefix([':', '/']) else {
                return Err(bad("no port after the ]"));
            };
            (host, port)
        } else {
            match full.split_once([':', '/']) {
                Some(parts) => parts,
                None => return Err(bad("no port")),
            }
        };
        if host.is_empty() || host.len() > 1024 || host.contains([' ', '\t']) {
            return Err(bad("an invalid host"));
        }
        let port = match port {
            "*" => None,
            p => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => return Err(bad("an invalid port")),
            },
        };
        Ok(Self {
            text: text.to_string(),
            host: host.to_string(),
            port,
        })
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    /// OpenSSH's `open_match`: the host exactly as the client named it
    /// (`*` for any), no name lookup, no pattern.
    fn allows_open(&self, host: &str, port: u16) -> bool {
        self.port_matches(port) && (self.host == "*" || self.host == host)
    }

    /// OpenSSH's `remote_open_match`: the listen address lowercased,
    /// matched against the host as a pattern (`*`, `?`). A request for
    /// port 0 (any free port) matches only a `*` port.
    fn allows_listen(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.port_matches(port) && wildcard_match(self.host.as_bytes(), host.as_bytes())
    }
}

/// The options of one key, in the order written (`restrict,pty` is not
/// `pty,restrict`). Empty: no restriction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    list: Vec<KeyOption>,
}

/// Where the options end in a line that starts with them: the first
/// whitespace outside double quotes (OpenSSH's
/// `sshkey_advance_past_options`).
pub(super) fn options_end(line: &str) -> Result<usize> {
    let bytes = line.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if bytes.get(i + 1) == Some(&b'"') => i += 1,
            b'"' => quoted = !quoted,
            b' ' | b'\t' if !quoted => return Ok(i),
            _ => {}
        }
        i += 1;
    }
    if quoted {
        return Err(invalid("key options have an unterminated quote"));
    }
    Ok(bytes.len())
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

/// The value after `name=`: a double-quoted string where `\"` stands for
/// a quote (any other backslash is kept). Returns it and the rest.
fn dequote<'a>(name: &str, text: &'a str) -> Result<(String, &'a str)> {
    let Some(body) = text.strip_prefix('"') else {
        return Err(invalid(format!(
            "key option {name:?}: the value must be in double quotes"
        )));
    };
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if chars.peek().map(|&(_, n)| n) == Some('"') => {
                chars.next();
                value.push('"');
            }
            '"' => return Ok((value, &body[i + 1..])),
            c if c.is_control() && c != '\t' => {
                return Err(invalid(format!(
                    "key option {name:?}: the value has a control character"
                )));
            }
            c => value.push(c),
        }
    }
    Err(invalid(format!(
        "key option {name:?}: the value has no closing quote"
    )))
}

/// Write a value back in double quotes.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\\\""))
}

impl KeyOptions {
    /// Parse the options field of a line (everything before the key type).
    pub fn parse(text: &str) -> Result<Self> {
        let mut list: Vec<KeyOption> = Vec::new();
        let mut rest = text;
        if rest.is_empty() {
            return Ok(Self { list });
        }
        loop {
            let end = rest.find([',', '=']).unwrap_or(rest.len());
            let name = &rest[..end];
            let lower = name.to_ascii_lowercase();
            let has_value = rest[end..].starts_with('=');
            let mut after = &rest[end..];
            let option = if has_value {
                let (value, tail) = dequote(name, &rest[end + 1..])?;
                after = tail;
                Self::valued(&lower, name, value, &list)?
            } else {
                Self::flag(&lower, name)?
            };
            if let Some(option) = option {
                list.push(option);
            }
            if after.is_empty() {
                break;
            }
            let Some(next) = after.strip_prefix(',') else {
                return Err(invalid(format!(
                    "key option {name:?} is followed by {:?} instead of a comma",
                    after.chars().take(20).collect::<String>()
                )));
            };
            if next.is_empty() {
                return Err(invalid("key options end with a comma"));
            }
            rest = next;
        }
        Ok(Self { list })
    }

    fn flag(lower: &str, name: &str) -> Result<Option<KeyOption>> {
        let (allow, base) = match lower.strip_prefix("no-") {
            Some(base) => (false, base),
            None => (true, lower),
        };
        Ok(Some(match base {
            "restrict" if allow => KeyOption::Restrict,
            "pty" => KeyOption::Pty(allow),
            "port-forwarding" => KeyOption::PortForwarding(allow),
            "agent-forwarding" => KeyOption::AgentForwarding(allow),
            "x11-forwarding" => KeyOption::X11Forwarding(allow),
            "user-rc" => KeyOption::UserRc(allow),
            "cert-authority" if allow => {
                return Err(unsupported(name, "certificates are not accepted"));
            }
            "touch-required" | "verify-required" => {
                return Err(unsupported(name, "security keys (sk-*) are not accepted"));
            }
            "" => return Err(invalid("key options have an empty option")),
            _ => return Err(unknown(name)),
        }))
    }

    fn valued(
        lower: &str,
        name: &str,
        value: String,
        so_far: &[KeyOption],
    ) -> Result<Option<KeyOption>> {
        Ok(Some(match lower {
            "command" => {
                if so_far.iter().any(|o| matches!(o, KeyOption::Command(_))) {
                    return Err(invalid("key options have more than one command="));
                }
                KeyOption::Command(value)
            }
            "from" => {
                if so_far.iter().any(|o| matches!(o, KeyOption::From(_))) {
                    return Err(invalid("key options have more than one from="));
                }
                KeyOption::From(FromList::parse(&value)?)
            }
            "expiry-time" => {
                let at = parse_expiry(&value)?;
                KeyOption::ExpiryTime { text: value, at }
            }
            "environment" => {
                let Some((var, val)) = value.split_once('=') else {
                    return Err(invalid(format!(
                        "key option environment={value:?} is not NAME=value"
                    )));
                };
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(invalid(format!(
                        "key option environment=: {var:?} is not a variable name (letters, digits, _)"
                    )));
                }
                let count = so_far
                    .iter()
                    .filter(|o| matches!(o, KeyOption::Environment { .. }))
                    .count();
                if count >= MAX_ENVIRONMENT {
                    return Err(invalid("key options have too many environment="));
                }
                // The first one of a name wins, as in OpenSSH.
                if so_far
                    .iter()
                    .any(|o| matches!(o, KeyOption::Environment { name, .. } if name == var))
                {
                    return Ok(None);
                }
                KeyOption::Environment {
                    name: var.to_string(),
                    value: val.to_string(),
                }
            }
            "permitopen" => KeyOption::PermitOpen(Permit::parse(name, &value, false)?),
            "permitlisten" => KeyOption::PermitListen(Permit::parse(name, &value, true)?),
            "tunnel" => {
                return Err(unsupported(
                    name,
                    "the gateway refuses tunnel forwarding; use restrict",
                ));
            }
            "principals" => {
                return Err(unsupported(name, "certificates are not accepted"));
            }
            _ => return Err(unknown(name)),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The options in the order written.
    pub fn options(&self) -> &[KeyOption] {
        &self.list
    }

    /// A flag as the options leave it: allowed unless `restrict` or its
    /// `no-` form came last.
    fn flag_allowed(&self, pick: impl Fn(&KeyOption) -> Option<bool>) -> bool {
        self.list.iter().fold(true, |allowed, o| match o {
            KeyOption::Restrict => false,
            o => pick(o).unwrap_or(allowed),
        })
    }

    pub fn pty_allowed(&self) -> bool {
        self.flag_allowed(|o| match o {
            KeyOption::Pty(b) => Some(*b),
            _ => None,
        })
    }

    pub fn port_forwarding_allowed(&self) -> bool {
        self.flag_allowed(|o| match o {
            KeyOption::PortForwarding(b) => Some(*b),
            _ => None,
        })
    }

    /// Whether `ssh -L`/`-D` may connect to `host:port` (the host as the
    /// client named it): allowed when the key has no `permitopen=`, else
    /// when one of them matches. `port_forwarding_allowed` comes first.
    pub fn permits_open(&self, host: &str, port: u16) -> bool {
        self.permitted(|o| match o {
            KeyOption::PermitOpen(p) => Some(p.allows_open(host, port)),
            _ => None,
        })
    }

    /// Whether `ssh -R` may listen at `host:port` (the address as the
    /// client sent it; port 0 for any free one): allowed when the key has
    /// no `permitlisten=`, else when one of them matches.
    pub fn permits_listen(&self, host: &str, port: u16) -> bool {
        self.permitted(|o| match o {
            KeyOption::PermitListen(p) => Some(p.allows_listen(host, port)),
            _ => None,
        })
    }

    /// A list of entries (`pick` answers for its kind only): no entry
    /// allows anything, else one must match.
    fn permitted(&self, pick: impl Fn(&KeyOption) -> Option<bool>) -> bool {
        let mut entries = self.list.iter().filter_map(pick).peekable();
        entries.peek().is_none() || entries.any(|matched| matched)
    }

    pub fn agent_forwarding_allowed(&self) -> bool {
        self.flag_allowed(|o| match o {
            KeyOption::AgentForwarding(b) => Some(*b),
            _ => None,
        })
    }

    pub fn user_rc_allowed(&self) -> bool {
        self.flag_allowed(|o| match o {
            KeyOption::UserRc(b) => Some(*b),
            _ => None,
        })
    }

    pub fn x11_forwarding_allowed(&self) -> bool {
        self.flag_allowed(|o| match o {
            KeyOption::X11Forwarding(b) => Some(*b),
            _ => None,
        })
    }

    /// The forced command (`command=`), if any.
    pub fn forced_command(&self) -> Option<&str> {
        self.list.iter().find_map(|o| match o {
            KeyOption::Command(c) => Some(c.as_str()),
            _ => None,
        })
    }

    /// `environment=` variables, each name once.
    pub fn environment(&self) -> impl Iterator<Item = (&str, &str)> {
        self.list.iter().filter_map(|o| match o {
            KeyOption::Environment { name, value } => Some((name.as_str(), value.as_str())),
            _ => None,
        })
    }

    /// The earliest `expiry-time`, in seconds since the epoch.
    pub fn expires_at(&self) -> Option<i64> {
        self.list
            .iter()
            .filter_map(|o| match o {
                KeyOption::ExpiryTime { at, .. } => Some(*at),
                _ => None,
            })
            .min()
    }

    /// Whether the key may log in from `peer` at `now` (`from=`,
    /// `expiry-time=`); the error says why not, for the server's log.
    pub fn check_login(&self, peer: IpAddr, now: SystemTime) -> std::result::Result<(), String> {
        if let Some(at) = self.expires_at() {
            let now = now
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            if at < now {
                return Err(format!("the key expired at {at} (expiry-time)"));
            }
        }
        for o in &self.list {
            if let KeyOption::From(list) = o
                && !list.allows(peer)
            {
                return Err(format!(
                    "{} does not match from=\"{}\"",
                    peer.to_canonical(),
                    list.text
                ));
            }
        }
        Ok(())
    }
}

impl KeyOptions {
    /// The options an OpenSSH user certificate stands for: its critical
    /// options (`force-command`, `source-address`; any other is refused,
    /// naming it, as OpenSSH refuses the certificate) and its permissions,
    /// granted only by their extension (`permit-pty`,
    /// `permit-port-forwarding`, ...; unknown extensions are ignored, as
    /// PROTOCOL.certkeys says).
    pub fn from_certificate<'a>(
        critical: impl IntoIterator<Item = (&'a str, &'a str)>,
        extensions: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self> {
        let extensions: Vec<&str> = extensions.into_iter().collect();
        let mut list = vec![KeyOption::Restrict];
        for p in PERMISSIONS {
            if extensions.contains(&p.extension) {
                list.push((p.option)(true));
            }
        }
        for (name, value) in critical {
            match name {
                CERT_FORCE_COMMAND => {
                    if value.chars().any(|c| c.is_control() && c != '\t') {
                        return Err(invalid(
                            "certificate critical option \"force-command\" has a control character",
                        ));
                    }
                    list.push(KeyOption::Command(value.to_string()));
                }
                CERT_SOURCE_ADDRESS => {
                    list.push(KeyOption::From(FromList::parse_addresses(value)?));
                }
                other => {
                    return Err(invalid(format!(
                        "certificate critical option {other:?} is not supported \
                         (only force-command and source-address are)"
                    )));
                }
            }
        }
        Ok(Self { list })
    }

    /// Both sets at once, as OpenSSH's `sshauthopt_merge` joins a
    /// certificate's options with its authorized_keys line's: a permission
    /// only if both allow it; both `from=` and every `expiry-time=` must
    /// pass; one forced command (two different ones are an error);
    /// `environment=` from `self` first; `permitopen=`/`permitlisten=`
    /// from `self` if it has any, else from `other`. The result is for
    /// enforcing and logging: it may hold two `from=`, which a key line
    /// could not.
    pub fn merge(&self, other: &KeyOptions) -> Result<KeyOptions> {
        // Nothing on one side: the other, as written.
        if other.is_empty() {
            return Ok(self.clone());
        }
        if self.is_empty() {
            return Ok(other.clone());
        }
        let mut list = vec![KeyOption::Restrict];
        for p in PERMISSIONS {
            if (p.allowed)(self) && (p.allowed)(other) {
                list.push((p.option)(true));
            }
        }
        match (self.forced_command(), other.forced_command()) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(format!(
                    "two different forced commands: {a:?} and {b:?}"
                )));
            }
            (Some(c), _) | (None, Some(c)) => list.push(KeyOption::Command(c.to_string())),
            (None, None) => {}
        }
        for o in self.list.iter().chain(&other.list) {
            if matches!(o, KeyOption::From(_) | KeyOption::ExpiryTime { .. }) {
                list.push(o.clone());
            }
        }
        for (name, value) in self.environment().chain(other.environment()) {
            let set = list
                .iter()
                .any(|o| matches!(o, KeyOption::Environment { name: n, .. } if n == name));
            if !set {
                list.push(KeyOption::Environment {
                    name: name.to_string(),
                    value: value.to_string(),
                });
            }
        }
        let opens = |o: &KeyOptions| -> Vec<KeyOption> {
            o.list
                .iter()
                .filter(|x| matches!(x, KeyOption::PermitOpen(_)))
                .cloned()
                .collect()
        };
        let listens = |o: &KeyOptions| -> Vec<KeyOption> {
            o.list
                .iter()
                .filter(|x| matches!(x, KeyOption::PermitListen(_)))
                .cloned()
                .collect()
        };
        for pick in [opens, listens] {
            let mine = pick(self);
            list.extend(if mine.is_empty() { pick(other) } else { mine });
        }
        Ok(Self { list })
    }
}

/// A permission a key option can take away and a certificate extension
/// can grant.
struct Permission {
    /// The extension granting it (PROTOCOL.certkeys).
    extension: &'static str,
    /// Whether options leave it allowed.
    allowed: fn(&KeyOptions) -> bool,
    /// The option allowing (`true`) or refusing it.
    option: fn(bool) -> KeyOption,
}

const PERMISSIONS: [Permission; 5] = [
    Permission {
        extension: "permit-pty",
        allowed: KeyOptions::pty_allowed,
        option: KeyOption::Pty,
    },
    Permission {
        extension: "permit-port-forwarding",
        allowed: KeyOptions::port_forwarding_allowed,
        option: KeyOption::PortForwarding,
    },
    Permission {
        extension: "permit-agent-forwarding",
        allowed: KeyOptions::agent_forwarding_allowed,
        option: KeyOption::AgentForwarding,
    },
    Permission {
        extension: "permit-X11-forwarding",
        allowed: KeyOptions::x11_forwarding_allowed,
        option: KeyOption::X11Forwarding,
    },
    Permission {
        extension: "permit-user-rc",
        allowed: KeyOptions::user_rc_allowed,
        option: KeyOption::UserRc,
    },
];

/// A user certificate's critical option forcing a command (as `command=`).
pub const CERT_FORCE_COMMAND: &str = "force-command";
/// A user certificate's critical option limiting client addresses (as
/// `from=`, addresses and CIDR networks only).
pub const CERT_SOURCE_ADDRESS: &str = "source-address";

fn unsupported(name: &str, why: &str) -> Error {
    invalid(format!("key option {name:?} is not supported: {why}"))
}

fn unknown(name: &str) -> Error {
    invalid(format!("unknown key option {name:?}"))
}

impl fmt::Display for KeyOptions {
    /// The options in `authorized_keys` syntax (empty when there are none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |allow: bool, name: &str| {
            if allow {
                name.to_string()
            } else {
                format!("no-{name}")
            }
        };
        let mut first = true;
        for o in &self.list {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            let text = match o {
                KeyOption::Restrict => "restrict".to_string(),
                KeyOption::Pty(b) => flag(*b, "pty"),
                KeyOption::PortForwarding(b) => flag(*b, "port-forwarding"),
                KeyOption::AgentForwarding(b) => flag(*b, "agent-forwarding"),
                KeyOption::X11Forwarding(b) => flag(*b, "X11-forwarding"),
                KeyOption::UserRc(b) => flag(*b, "user-rc"),
                KeyOption::Command(c) => format!("command={}", quote(c)),
                KeyOption::From(l) => format!("from={}", quote(&l.text)),
                KeyOption::ExpiryTime { text, .. } => format!("expiry-time={}", quote(text)),
                KeyOption::Environment { name, value } => {
                    format!("environment={}", quote(&format!("{name}={value}")))
                }
                KeyOption::PermitOpen(p) => format!("permitopen={}", quote(&p.text)),
                KeyOption::PermitListen(p) => format!("permitlisten={}", quote(&p.text)),
            };
            f.write_str(&text)?;
        }
        Ok(())
    }
}

impl serde::Serialize for KeyOptions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyOptions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A `from=` pattern list: client addresses, CIDR networks and address
/// wildcards (`*`, `?`), each possibly negated with `!`. A key is allowed
/// when some entry matches and no negated entry does. Host names are not
/// resolved, so entries that name hosts are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromList {
    /// As written.
    text: String,
    entries: Vec<(bool, AddrPattern)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AddrPattern {
    Network(IpAddr, u8),
    Wildcard(String),
}

impl FromList {
    pub fn parse(text: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for raw in text.split(',') {
            let (negated, entry) = match raw.strip_prefix('!') {
                Some(e) => (true, e),
                None => (false, raw),
            };
            if entry.is_empty() {
                return Err(invalid(format!("from={text:?} has an empty entry")));
            }
            entries.push((negated, AddrPattern::parse(entry)?));
        }
        Ok(Self {
            text: text.to_string(),
            entries,
        })
    }

    /// A certificate's `source-address`: addresses and CIDR networks,
    /// comma-separated, nothing negated and no wildcard (OpenSSH's
    /// `addr_match_cidr_list`).
    pub fn parse_addresses(text: &str) -> Result<Self> {
        let list = Self::parse(text).map_err(|_| {
            invalid(format!(
                "certificate source-address {text:?} is not a list of addresses and CIDR networks"
            ))
        })?;
        for (negated, pattern) in &list.entries {
            if *negated || matches!(pattern, AddrPattern::Wildcard(_)) {
                return Err(invalid(format!(
                    "certificate source-address {text:?} may hold only addresses and CIDR networks"
                )));
            }
        }
        Ok(list)
    }

    /// Whether a client at `peer` may use the key.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        let text = peer.to_string();
        let mut matched = false;
        for (negated, pattern) in &self.entries {
            if pattern.matches(peer, &text) {
                if *negated {
                    return false;
                }
                matched = true;
            }
        }
        matched
    }
}

impl AddrPattern {
    fn parse(entry: &str) -> Result<Self> {
        if let Some((addr, len)) = entry.split_once('/') {
            let bad = || invalid(format!("from= entry {entry:?} is not a CIDR network"));
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(bad());
            }
            if mask(addr, len) != addr {
                return Err(invalid(format!(
                    "from= network {entry:?} has address bits set beyond its /{len} mask"
                )));
            }
            return Ok(Self::Network(addr, len));
        }
        if let Ok(addr) = entry.parse::<IpAddr>() {
            let len = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Network(addr.to_canonical(), len));
        }
        let address_like = entry
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '*' | '?'));
        if !address_like || !entry.contains(['*', '?']) {
            return Err(invalid(format!(
                "from= entry {entry:?} is not an address, a CIDR network or an address \
                 pattern with * or ? (host names are not resolved)"
            )));
        }
        Ok(Self::Wildcard(entry.to_ascii_lowercase()))
    }

    fn matches(&self, peer: IpAddr, text: &str) -> bool {
        match self {
            Self::Network(net, len) => net.is_ipv4() == peer.is_ipv4() && mask(peer, *len) == *net,
            Self::Wildcard(p) => wildcard_match(p.as_bytes(), text.as_bytes()),
        }
    }
}

/// `addr` with all but its first `len` bits cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// `*` (any run) and `?` (any one character), as OpenSSH's `match_pattern`.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `YYYYMMDD[HHMM[SS]]`, local time, or UTC with a `Z` (or `UTC`) suffix,
/// as OpenSSH's `parse_absolute_time`; seconds since the epoch.
fn parse_expiry(text: &str) -> Result<i64> {
    let bad = || {
        invalid(format!(
            "key option expiry-time={text:?} is not YYYYMMDD[HHMM[SS]] with an optional Z for UTC"
        ))
    };
    let (digits, utc) = if let Some(d) = text.strip_suffix(['Z', 'z']) {
        (d, true)
    } else if text.len() > 3 && text[text.len() - 3..].eq_ignore_ascii_case("UTC") {
        (&text[..text.len() - 3], true)
    } else {
        (text, false)
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let field = |from: usize, len: usize| -> i64 {
        digits
            .get(from..from + len)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let (year, month, day) = (field(0, 4), field(4, 2), field(6, 2));
    let (hour, minute, second) = (field(8, 2), field(10, 2), field(12, 2));
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if year < 1970 || day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let at = if utc {
        days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    } else {
        local_time(year, month, day, hour, minute, second).ok_or_else(bad)?
    };
    if at <= 0 {
        return Err(bad());
    }
    Ok(at)
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// A local wall-clock time as seconds since the epoch (`mktime`).
fn local_time(year: i64, month: i64, day: i64, hour: i64, min: i64, sec: i64) -> Option<i64> {
    let int = |v: i64| libc::c_int::try_from(v).ok();
    // SAFETY: an all-zero `tm` is a valid value (null `tm_zone`).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = int(year - 1900)?;
    tm.tm_mon = int(month - 1)?;
    tm.tm_mday = int(day)?;
    tm.tm_hour = int(hour)?;
    tm.tm_min = int(min)?;
    tm.tm_sec = int(sec)?;
    tm.tm_isdst = -1;
    // SAFETY: `tm` is a valid, exclusively borrowed struct; mktime only
    // reads the time zone and normalizes the fields.
    let at = unsafe { libc::mktime(&mut tm) };
    // `time_t` is not 64 bits everywhere.
    #[allow(clippy::useless_conversion)]
    let at = i64::from(at);
    (at != -1).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_quoted_values_with_commas_and_quotes() {
        let o = KeyOptions::parse(
            r#"no-pty,command="echo \"a, b\" c\\d",from="10.0.0.0/8,!10.1.*",NO-X11-Forwarding"#,
        )
        .unwrap();
        assert_eq!(o.forced_command(), Some(r#"echo "a, b" c\\d"#));
        assert!(!o.pty_allowed());
        assert!(!o.x11_forwarding_allowed());
        assert!(o.port_forwarding_allowed());
        // Written back, it reads the same.
        let again = KeyOptions::parse(&o.to_string()).unwrap();
        assert_eq!(again, o);
        assert_eq!(
            o.to_string(),
            r#"no-pty,command="echo \"a, b\" c\\d",from="10.0.0.0/8,!10.1.*",no-X11-forwarding"#
        );
    }

    #[test]
    fn restrict_and_later_flags_in_order() {
        let r = KeyOptions::parse("restrict").unwrap();
        assert!(!r.pty_allowed() && !r.port_forwarding_allowed());
        assert!(!r.agent_forwarding_allowed() && !r.x11_forwarding_allowed());
        assert!(KeyOptions::parse("restrict,pty").unwrap().pty_allowed());
        assert!(!KeyOptions::parse("pty,restrict").unwrap().pty_allowed());
        assert!(KeyOptions::default().pty_allowed());
    }

    #[test]
    fn refuses_what_it_cannot_enforce_naming_it() {
        for (text, name) in [
            ("bogus", "bogus"),
            ("no-pty,frobnicate=\"x\"", "frobnicate"),
            ("permitopen=\"host\"", "permitopen"),
            ("permitopen=\"host:0\"", "permitopen"),
            ("permitopen=\"[::1]80\"", "permitopen"),
            ("permitlisten=\"localhost:http\"", "permitlisten"),
            ("permitlisten=\"70000\"", "permitlisten"),
            ("tunnel=\"1\"", "tunnel"),
            ("principals=\"a\"", "principals"),
            ("cert-authority", "cert-authority"),
            ("no-touch-required", "no-touch-required"),
            ("no-restrict", "no-restrict"),
        ] {
            let e = KeyOptions::parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("{name:?}")), "{text}: {e}");
        }
        for bad in [
            "command=x",
            "command=\"x",
            "command=\"a\",command=\"b\"",
            "no-pty,",
            "no-pty,,pty",
            "command=\"a\"x",
            "environment=\"NOEQUALS\"",
            "environment=\"BAD-NAME=1\"",
            "from=\"10.0.0.1/8\"",
            "from=\"host.example.com\"",
            "from=\"\"",
            "from=\"10.0.0.1,\"",
            "expiry-time=\"2030\"",
            "expiry-time=\"20301301\"",
            "command=\"a\rb\"",
        ] {
            assert!(KeyOptions::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_patterns() {
        let allows = |list: &str, peer: &str| FromList::parse(list).unwrap().allows(ip(peer));
        assert!(allows("127.0.0.1", "127.0.0.1"));
        assert!(allows("127.0.0.1", "::ffff:127.0.0.1"));
        assert!(!allows("10.0.0.0/8", "127.0.0.1"));
        assert!(allows("10.0.0.0/8", "10.200.3.4"));
        assert!(allows("127.0.0.*", "127.0.0.1"));
        assert!(allows("127.0.0.?", "127.0.0.1"));
        assert!(!allows("127.0.0.?", "127.0.0.10"));
        assert!(allows("*", "192.168.1.1"));
        assert!(!allows("!127.0.0.1,*", "127.0.0.1"));
        assert!(allows("!127.0.0.1,*", "127.0.0.2"));
        assert!(!allows("!10.0.0.0/8", "192.168.1.1"));
        assert!(allows("::1", "::1"));
        assert!(allows("fe80::/10", "fe80::1"));
        assert!(!allows("fe80::/10", "127.0.0.1"));
        assert!(allows("0.0.0.0/0", "8.8.8.8"));
    }

    #[test]
    fn expiry_time_formats_and_enforcement() {
        assert_eq!(parse_expiry("19700102Z").unwrap(), 86400);
        assert_eq!(parse_expiry("203001020304Z").unwrap(), 1_893_553_440);
        assert_eq!(parse_expiry("20300102030405UTC").unwrap(), 1_893_553_445);
        assert!(parse_expiry("20300102").is_ok());
        assert!(parse_expiry("20230229Z").is_err());
        assert!(parse_expiry("20240229Z").is_ok());
        let past = KeyOptions::parse("expiry-time=\"20200101Z\"").unwrap();
        let future = KeyOptions::parse("expiry-time=\"29990101Z\"").unwrap();
        let now = SystemTime::now();
        assert!(past.check_login(ip("127.0.0.1"), now).is_err());
        assert!(future.check_login(ip("127.0.0.1"), now).is_ok());
        // The earliest of several wins.
        let both =
            KeyOptions::parse("expiry-time=\"29990101Z\",expiry-time=\"20200101Z\"").unwrap();
        assert!(both.check_login(ip("127.0.0.1"), now).is_err());
    }

    #[test]
    fn permitopen_and_permitlisten_as_openssh_matches_them() {
        let o = KeyOptions::parse(
            r#"permitopen="localhost:8080",permitopen="[::1]:*",permitlisten="9000",permitlisten="local*:7000""#,
        )
        .unwrap();
        assert!(o.permits_open("localhost", 8080));
        // The host as the client names it: no lookup, no case folding.
        assert!(!o.permits_open("127.0.0.1", 8080));
        assert!(!o.permits_open("LOCALHOST", 8080));
        assert!(!o.permits_open("localhost", 8081));
        assert!(o.permits_open("::1", 1) && o.permits_open("::1", 65535));
        // A bare port listens on any host; patterns match lowercased hosts.
        assert!(o.permits_listen("localhost", 9000) && o.permits_listen("", 9000));
        assert!(o.permits_listen("LOCALHOST", 7000));
        assert!(!o.permits_listen("127.0.0.1", 7000));
        assert!(!o.permits_listen("localhost", 0), "port 0 needs a * port");
        assert!(
            KeyOptions::parse(r#"permitlisten="*""#)
                .unwrap()
                .permits_listen("x", 0)
        );
        assert!(
            KeyOptions::parse(r#"permitopen="*:22""#)
                .unwrap()
                .permits_open("any", 22)
        );
        assert!(
            KeyOptions::parse(r#"permitopen="h/22""#)
                .unwrap()
                .permits_open("h", 22)
        );
        // No entry of a kind: that kind is not limited.
        let none = KeyOptions::parse("no-pty").unwrap();
        assert!(none.permits_open("example.com", 1) && none.permits_listen("x", 0));
        // Written back as written.
        assert_eq!(KeyOptions::parse(&o.to_string()).unwrap(), o);
        assert!(o.to_string().contains(r#"permitlisten="9000""#));
        // They restrict forwarding; they never allow it back.
        let r = KeyOptions::parse(r#"restrict,permitopen="localhost:80""#).unwrap();
        assert!(!r.port_forwarding_allowed());
    }

    #[test]
    fn certificate_options_grant_only_what_extensions_permit() {
        let all = [
            "permit-X11-forwarding",
            "permit-agent-forwarding",
            "permit-port-forwarding",
            "permit-pty",
            "permit-user-rc",
        ];
        let o = KeyOptions::from_certificate([], all).unwrap();
        assert!(o.pty_allowed() && o.port_forwarding_allowed() && o.user_rc_allowed());
        assert!(o.agent_forwarding_allowed() && o.x11_forwarding_allowed());
        assert_eq!(o.forced_command(), None);
        // No extension: nothing permitted (ssh-keygen -O clear).
        let none = KeyOptions::from_certificate([], []).unwrap();
        assert!(!none.pty_allowed() && !none.port_forwarding_allowed());
        // Unknown extensions are ignored; one permission alone.
        let pty =
            KeyOptions::from_certificate([], ["permit-pty", "no-touch-required", "x@y"]).unwrap();
        assert!(pty.pty_allowed() && !pty.port_forwarding_allowed());

        let o = KeyOptions::from_certificate(
            [
                ("force-command", "echo hi"),
                ("source-address", "10.0.0.0/8,127.0.0.1"),
            ],
            all,
        )
        .unwrap();
        assert_eq!(o.forced_command(), Some("echo hi"));
        assert!(o.check_login(ip("127.0.0.1"), SystemTime::now()).is_ok());
        assert!(o.check_login(ip("192.168.0.1"), SystemTime::now()).is_err());

        for (name, value) in [
            ("verify-required", ""),
            ("frobnicate", "1"),
            ("source-address", "127.0.0.*"),
            ("source-address", "!10.0.0.1"),
            ("source-address", "host.example"),
            ("force-command", "a\nb"),
        ] {
            let e = KeyOptions::from_certificate([(name, value)], all)
                .unwrap_err()
                .to_string();
            assert!(e.contains(name), "{name}={value}: {e}");
        }
    }

    #[test]
    fn merge_keeps_the_restrictions_of_both() {
        let a =
            KeyOptions::parse(r#"no-pty,from="127.0.0.0/8",environment="A=1",permitopen="h:1""#)
                .unwrap();
        let b = KeyOptions::parse(
            r#"no-port-forwarding,from="10.0.0.0/8",environment="A=2",environment="B=2",command="x",permitopen="h:2",permitlisten="9""#,
        )
        .unwrap();
        let m = a.merge(&b).unwrap();
        assert!(!m.pty_allowed() && !m.port_forwarding_allowed());
        assert!(m.agent_forwarding_allowed());
        assert_eq!(m.forced_command(), Some("x"));
        // Both from= must pass: no address is in both networks.
        let now = SystemTime::now();
        assert!(m.check_login(ip("127.0.0.1"), now).is_err());
        assert!(m.check_login(ip("10.0.0.1"), now).is_err());
        let env: Vec<_> = m.environment().collect();
        assert_eq!(env, vec![("A", "1"), ("B", "2")]);
        assert!(m.permits_open("h", 1) && !m.permits_open("h", 2));
        assert!(m.permits_listen("x", 9) && !m.permits_listen("x", 8));
        // Nothing on either side: nothing lost; nothing on one: the other.
        let m = KeyOptions::default().merge(&KeyOptions::default()).unwrap();
        assert!(m.pty_allowed() && m.port_forwarding_allowed() && m.user_rc_allowed());
        assert_eq!(a.merge(&KeyOptions::default()).unwrap(), a);
        assert_eq!(KeyOptions::default().merge(&b).unwrap(), b);
        // The same command twice is one; two different ones conflict.
        let c = KeyOptions::parse(r#"command="x""#).unwrap();
        assert_eq!(c.merge(&b).unwrap().forced_command(), Some("x"));
        let d = KeyOptions::parse(r#"command="y""#).unwrap();
        assert!(d.merge(&b).is_err());
        // The earliest expiry-time counts.
        let e = KeyOptions::parse(r#"expiry-time="20200101Z""#).unwrap();
        assert!(
            KeyOptions::default()
                .merge(&e)
                .unwrap()
                .check_login(ip("::1"), now)
                .is_err()
        );
    }

    #[test]
    fn environment_first_wins() {
        let o = KeyOptions::parse(r#"environment="A=1",environment="A=2",environment="B=x=y""#)
            .unwrap();
        let env: Vec<_> = o.environment().collect();
        assert_eq!(env, vec![("A", "1"), ("B", "x=y")]);
    }

    #[test]
    fn options_end_respects_quotes() {
        assert_eq!(options_end(r#"command="a b" ssh-ed25519"#).unwrap(), 13);
        assert_eq!(options_end(r#"command="a \" b" k"#).unwrap(), 16);
        assert!(options_end(r#"command="a b ssh-ed25519"#).is_err());
    }
}
