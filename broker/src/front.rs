//! The validating front of the MQTT listeners (plaintext, and TLS ended
//! here): every packet a client sends is checked as bytes against the MQTT
//! 3.1.1 and 5.0 rules
//! that rmqtt 0.24's decoder does not enforce, before the engine sees it
//! (CONFORMANCE.md lists them).
//!
//! [`Validator`] is the pure part: fed the client's bytes, it says which
//! bytes go on to the engine and when to stop — with the answer the
//! specification asks for (CONNACK `0x01` for an unknown protocol level,
//! CONNACK "identifier rejected" for a client id with control characters,
//! DISCONNECT `0x81`/`0x82` to an MQTT 5 client) — closes the connection
//! right after a DISCONNECT, and closes a client silent for one and a half
//! times its keep-alive. For MQTT 5 it also holds the client to the flow
//! control and topic aliases the broker announces: more unacknowledged QoS 2
//! publishes than the Receive Maximum is DISCONNECT `0x93`, an alias of 0,
//! above the maximum or never set is `0x94` or `0x82`. [`serve`] is the shell: it accepts
//! on the public address and hands each connection to the engine's own
//! listener on loopback with a PROXY protocol header, so the engine (and
//! the login brake) still sees the client's address.
//!
//! It tells [`Connections`] when a client id's connection opens, when a
//! client whose session ends with its connection (a 3.1.1 clean session, an
//! MQTT 5 Session Expiry of 0) has gone — at once, before the engine sees
//! the end — and when the connection is over, so that a reconnect can wait
//! for the engine to end that session (`reconnect.rs`).
//!
//! It does not interpret inputs, topics of the contract or permissions:
//! that is the hooks' job. Invariant: the bytes forwarded are exactly the
//! client's, in order, packet by packet; nothing is rewritten.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::namespaces::valid_topic_name;

/// MQTT packet types (the high nibble of the first byte).
mod kind {
    pub const CONNECT: u8 = 1;
    pub const PUBLISH: u8 = 3;
    pub const PUBREL: u8 = 6;
    pub const SUBSCRIBE: u8 = 8;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const PINGREQ: u8 = 12;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// What to do after some bytes from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes on to the engine.
    Forward(Vec<u8>),
    /// Send these bytes on, then close the connection (after DISCONNECT).
    ForwardAndClose(Vec<u8>),
    /// A violation: answer the client with these bytes (maybe none), forward
    /// nothing more, close.
    Refuse {
        /// The answer (CONNACK or MQTT 5 DISCONNECT), possibly empty.
        answer: Vec<u8>,
        /// Why, for the log.
        why: String,
    },
}

/// What the broker announces to its clients, which the front holds them to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest packet accepted, bytes: a larger one is refused before
    /// it is read, so a client cannot make the front buffer without end.
    pub max_packet: usize,
    /// The broker's in-flight window for a client's QoS 2 publishes (the
    /// engine announces the smaller of it and the client's own Receive
    /// Maximum).
    pub receive_maximum: u16,
    /// The largest topic alias an MQTT 5 client may use.
    pub topic_alias_maximum: u16,
}

/// The sans-IO packet checker for one connection.
#[derive(Debug)]
pub struct Validator {
    buffer: Vec<u8>,
    /// The protocol level of the accepted CONNECT (4 = 3.1.1, 5, 3 = 3.1).
    level: Option<u8>,
    /// The accepted CONNECT's keep-alive, seconds (0: none).
    keep_alive: u16,
    limits: Limits,
    /// The Receive Maximum announced to this client.
    receive_maximum: u16,
    /// Packet ids of the client's QoS 2 publishes not yet released (PUBREL).
    unreleased: std::collections::HashSet<u16>,
    /// The topic aliases this connection has set.
    aliases: std::collections::HashSet<u16>,
    /// The accepted CONNECT's client id.
    client_id: Option<String>,
    /// Whether the session ends with this connection (3.1.1: a clean
    /// session; MQTT 5: a Session Expiry of 0, from the CONNECT or the
    /// DISCONNECT).
    session_ends: bool,
    done: bool,
}

/// Why a packet is refused, and how MQTT 5 names it.
struct Violation {
    why: String,
    /// MQTT 5 DISCONNECT reason: 0x81 malformed packet, 0x82 protocol error.
    reason: u8,
}

fn malformed(why: impl Into<String>) -> Violation {
    Violation {
        why: why.into(),
        reason: 0x81,
    }
}

fn protocol(why: impl Into<String>) -> Violation {
    Violation {
        why: why.into(),
        reason: 0x82,
    }
}

/// A cursor over one packet's body.
struct Body<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Violation> {
        let part = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| malformed("the packet ends inside a field"))?;
        self.at += n;
        Ok(part)
    }

    fn u8(&mut self) -> Result<u8, Violation> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Violation> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn binary(&mut self) -> Result<&'a [u8], Violation> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// A UTF-8 string: valid, no U+0000 ([MQTT-1.5.3-1], [MQTT-1.5.3-2]).
    fn string(&mut self) -> Result<&'a str, Violation> {
        let bytes = self.binary()?;
        let s = std::str::from_utf8(bytes).map_err(|_| malformed("a string is not valid UTF-8"))?;
        if s.contains('\0') {
            return Err(malformed("a string holds U+0000"));
        }
        Ok(s)
    }

    fn varint(&mut self) -> Result<usize, Violation> {
        let mut value = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            value |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a variable byte integer is longer than 4 bytes"))
    }

    /// Reads MQTT 5 properties, each checked for a known identifier and a
    /// whole value (MQTT 5 §2.2.2.2); keeps the two the front acts on.
    fn properties(&mut self) -> Result<Properties, Violation> {
        let n = self.varint()?;
        let mut props = Body {
            bytes: self.take(n)?,
            at: 0,
        };
        let mut found = Properties::default();
        while props.rest() > 0 {
            match props.u8()? {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                    props.u8()?;
                }
                0x13 | 0x22 => {
                    props.u16()?;
                }
                0x21 => found.receive_maximum = Some(props.u16()?),
                0x23 => found.topic_alias = Some(props.u16()?),
                0x11 => {
                    let b = props.take(4)?;
                    found.session_expiry = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
                0x02 | 0x18 | 0x27 => {
                    props.take(4)?;
                }
                0x0b => {
                    props.varint()?;
                }
                0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => {
                    props.string()?;
                }
                0x09 | 0x16 => {
                    props.binary()?;
                }
                0x26 => {
                    props.string()?;
                    props.string()?;
                }
                other => return Err(malformed(format!("unknown property {other:#04x}"))),
            }
        }
        Ok(found)
    }

    fn rest(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// The MQTT 5 properties the front acts on.
#[derive(Default)]
struct Properties {
    receive_maximum: Option<u16>,
    topic_alias: Option<u16>,
    session_expiry: Option<u32>,
}

/// Whether a string is one a person or a device id should carry: no
/// control characters ([MQTT-1.5.3-2]: they SHOULD NOT appear).
fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// The remaining length at the front of `bytes` (after the first byte):
/// `Ok(None)` while incomplete.
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, Violation> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = bytes.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, 2 + i)));
        }
    }
    Err(malformed("the remaining length is longer than 4 bytes"))
}

impl Validator {
    /// A validator for a new connection held to `limits`.
    pub fn new(limits: Limits) -> Validator {
        Validator {
            buffer: Vec::new(),
            level: None,
            keep_alive: 0,
            limits,
            receive_maximum: limits.receive_maximum,
            unreleased: std::collections::HashSet::new(),
            aliases: std::collections::HashSet::new(),
            client_id: None,
            session_ends: false,
            done: false,
        }
    }

    /// Whether the session ends with this connection, as its CONNECT and
    /// DISCONNECT say.
    pub fn session_ends(&self) -> bool {
        self.session_ends
    }

    /// The client id of the accepted CONNECT, once there is one (empty when
    /// the client left it to the server).
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// How long the client may stay silent: one and a half times the
    /// keep-alive of its accepted CONNECT ([MQTT-3.1.2-24]); `None` before
    /// the CONNECT or with a keep-alive of 0.
    pub fn silence_allowed(&self) -> Option<std::time::Duration> {
        (self.level.is_some() && self.keep_alive > 0)
            .then(|| std::time::Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// Takes in bytes from the client; returns what to do, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Step> {
        if self.done {
            return Vec::new();
        }
        // Checked in place: what goes on is the buffer itself, and only an
        // incomplete packet at its end is copied back for the next read.
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.extend_from_slice(bytes);
        let mut at = 0;
        let mut end: Option<End> = None;
        while let Some(&first) = buffer.get(at) {
            let (length, header) = match remaining_length(&buffer[at..]) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(v) => {
                    end = Some(End::Violation(v));
                    break;
                }
            };
            if header + length > self.limits.max_packet {
                end = Some(End::Violation(Violation {
                    why: format!(
                        "a packet of {} bytes, above the limit of {}",
                        header + length,
                        self.limits.max_packet
                    ),
                    // MQTT 5: Packet too large.
                    reason: 0x95,
                }));
                break;
            }
            if buffer.len() - at < header + length {
                break;
            }
            let packet = at..at + header + length;
            match self.check(first, &buffer[at + header..packet.end]) {
                Ok(Checked::Pass) => at = packet.end,
                Ok(Checked::Last) => {
                    at = packet.end;
                    end = Some(End::Last);
                    break;
                }
                Ok(Checked::Answer(answer, why)) => {
                    end = Some(End::Answer(answer, why));
                    break;
                }
                Err(v) => {
                    end = Some(End::Violation(v));
                    break;
                }
            }
        }
        self.buffer = buffer.split_off(at);
        let checked = buffer;
        let forward = |checked: Vec<u8>| {
            if checked.is_empty() {
                Vec::new()
            } else {
                vec![Step::Forward(checked)]
            }
        };
        match end {
            None => forward(checked),
            Some(End::Last) => {
                self.done = true;
                vec![Step::ForwardAndClose(checked)]
            }
            Some(End::Answer(answer, why)) => {
                self.done = true;
                let mut steps = forward(checked);
                steps.push(Step::Refuse { answer, why });
                steps
            }
            Some(End::Violation(v)) => {
                let mut steps = forward(checked);
                steps.push(self.refuse(v));
                steps
            }
        }
    }

    /// The refusal of a violation: to an MQTT 5 client, a DISCONNECT with
    /// its reason; otherwise the connection is closed without a word.
    fn refuse(&mut self, v: Violation) -> Step {
        self.done = true;
        let answer = if self.level == Some(5) {
            vec![(kind::DISCONNECT << 4), 1, v.reason]
        } else {
            Vec::new()
        };
        Step::Refuse { answer, why: v.why }
    }

    fn check(&mut self, first: u8, body: &[u8]) -> Result<Checked, Violation> {
        let (packet, flags) = (first >> 4, first & 0x0f);
        let mut body = Body { bytes: body, at: 0 };
        let Some(level) = self.level else {
            if packet != kind::CONNECT {
                return Err(protocol("the first packet must be CONNECT"));
            }
            return self.connect(flags, &mut body);
        };
        let v5 = level == 5;
        // Fixed-header flags ([MQTT-2.2.2-1], [MQTT-2.2.2-2]).
        let expected = match packet {
            kind::PUBLISH => None,
            kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => Some(0b0010),
            _ => Some(0),
        };
        if expected.is_some_and(|e| e != flags) {
            return Err(malformed(format!(
                "packet type {packet} with reserved flags {flags:#06b}"
            )));
        }
        match packet {
            kind::CONNECT => Err(protocol("a second CONNECT")),
            kind::PUBLISH => {
                let qos = (flags >> 1) & 0b11;
                if qos == 3 {
                    return Err(malformed("PUBLISH with QoS 3"));
                }
                if qos == 0 && flags & 0b1000 != 0 {
                    return Err(malformed("a QoS 0 PUBLISH with DUP set"));
                }
                let topic = body.string()?;
                // An MQTT 5 PUBLISH may name its topic by alias only.
                if !(valid_topic_name(topic) || (topic.is_empty() && v5)) {
                    return Err(protocol(format!("{topic:?} is not a topic name")));
                }
                let id = if qos > 0 { body.u16()? } else { 1 };
                if id == 0 {
                    return Err(protocol("packet identifier 0"));
                }
                if v5 {
                    let alias = body.properties()?.topic_alias;
                    self.check_alias(topic, alias)?;
                    // [MQTT-3.3.4-7], [MQTT-3.3.4-8]: the client's QoS 2
                    // publishes stay unacknowledged until it releases them.
                    if qos == 2 && !self.unreleased.contains(&id) {
                        if self.unreleased.len() >= usize::from(self.receive_maximum) {
                            return Err(Violation {
                                why: format!("more than {} unacknowledged QoS 2 publishes", self.receive_maximum),
                                reason: 0x93,
                            });
                        }
                        self.unreleased.insert(id);
                    }
                }
                Ok(Checked::Pass)
            }
            kind::PUBREL => {
                let id = body.u16()?;
                self.unreleased.remove(&id);
                Ok(Checked::Pass)
            }
            kind::SUBSCRIBE => {
                body.u16()?;
                if v5 {
                    body.properties()?;
                }
                if body.rest() == 0 {
                    return Err(protocol("SUBSCRIBE without a topic filter"));
                }
                while body.rest() > 0 {
                    let filter = body.string()?;
                    let options = body.u8()?;
                    if filter.is_empty() {
                        return Err(protocol("an empty topic filter"));
                    }
                    let bad = if v5 {
                        options & 0b1100_0000 != 0 || options & 0b11 == 3 || (options >> 4) & 0b11 == 3
                    } else {
                        options & 0b1111_1100 != 0 || options & 0b11 == 3
                    };
                    if bad {
                        return Err(malformed(format!("subscription options {options:#010b}")));
                    }
                }
                Ok(Checked::Pass)
            }
            kind::UNSUBSCRIBE => {
                body.u16()?;
                if v5 {
                    body.properties()?;
                }
                if body.rest() == 0 {
                    return Err(protocol("UNSUBSCRIBE without a topic filter"));
                }
                while body.rest() > 0 {
                    body.string()?;
                }
                Ok(Checked::Pass)
            }
            kind::PINGREQ if body.rest() != 0 => Err(malformed("PINGREQ with a body")),
            kind::DISCONNECT if !v5 && body.rest() != 0 => Err(malformed("DISCONNECT with a body")),
            kind::DISCONNECT => {
                // MQTT 5: a reason code, then properties that may set the
                // Session Expiry anew.
                if body.rest() > 1 {
                    body.u8()?;
                    if let Some(expiry) = body.properties()?.session_expiry {
                        self.session_ends = expiry == 0;
                    }
                }
                Ok(Checked::Last)
            }
            kind::AUTH if !v5 => Err(malformed("AUTH before MQTT 5")),
            0 => Err(malformed("packet type 0 is reserved")),
            _ => Ok(Checked::Pass),
        }
    }

    /// A PUBLISH's topic alias (MQTT 5 §3.3.2.3.4): 0 or above the maximum
    /// is invalid ([MQTT-3.3.2-8], [MQTT-3.3.2-9]); an empty topic names
    /// an alias this connection has set ([MQTT-3.3.2-10], [MQTT-3.3.2-12]).
    fn check_alias(&mut self, topic: &str, alias: Option<u16>) -> Result<(), Violation> {
        match alias {
            Some(a) if a == 0 || a > self.limits.topic_alias_maximum => Err(Violation {
                why: format!("topic alias {a}"),
                reason: 0x94,
            }),
            Some(a) if topic.is_empty() => {
                if self.aliases.contains(&a) {
                    Ok(())
                } else {
                    Err(protocol(format!("topic alias {a} was never set")))
                }
            }
            Some(a) => {
                self.aliases.insert(a);
                Ok(())
            }
            None if topic.is_empty() => Err(protocol("an empty topic name without an alias")),
            None => Ok(()),
        }
    }

    fn connect(&mut self, flags: u8, body: &mut Body<'_>) -> Result<Checked, Violation> {
        if flags != 0 {
            return Err(malformed("CONNECT with reserved flags"));
        }
        let name = body.string()?;
        let level = body.u8()?;
        match (name, level) {
            ("MQTT", 4 | 5) | ("MQIsdp", 3) => {}
            ("MQTT" | "MQIsdp", _) => {
                // [MQTT-3.1.2-2]: CONNACK 0x01, unacceptable protocol level.
                return Ok(Checked::Answer(vec![0x20, 2, 0, 1], format!("protocol level {level}")));
            }
            _ => return Err(protocol(format!("protocol name {name:?}"))),
        }
        let v5 = level == 5;
        let connect_flags = body.u8()?;
        if connect_flags & 1 != 0 {
            return Err(malformed("the CONNECT flags' reserved bit is set"));
        }
        let will = connect_flags & 0b100 != 0;
        let will_qos = (connect_flags >> 3) & 0b11;
        let will_retain = connect_flags & 0b10_0000 != 0;
        let password = connect_flags & 0b100_0000 != 0;
        let username = connect_flags & 0b1000_0000 != 0;
        if will_qos == 3 || (!will && (will_qos != 0 || will_retain)) {
            return Err(malformed("inconsistent will flags"));
        }
        if !v5 && password && !username {
            return Err(malformed("a password without a username"));
        }
        let keep_alive = body.u16()?;
        let mut session_ends = connect_flags & 0b10 != 0;
        if v5 {
            let props = body.properties()?;
            match props.receive_maximum {
                Some(0) => return Err(protocol("a Receive Maximum of 0")),
                Some(theirs) => self.receive_maximum = theirs.min(self.limits.receive_maximum),
                None => {}
            }
            session_ends = props.session_expiry.unwrap_or(0) == 0;
        }
        let client_id = body.string()?;
        if !printable(client_id) {
            // Identifier rejected: 0x02 (3.1.1), 0x85 (5).
            let answer = if v5 {
                vec![0x20, 3, 0, 0x85, 0]
            } else {
                vec![0x20, 2, 0, 2]
            };
            return Ok(Checked::Answer(answer, format!("client id {client_id:?}")));
        }
        if will {
            if v5 {
                body.properties()?;
            }
            let topic = body.string()?;
            if !valid_topic_name(topic) {
                return Err(protocol(format!("will topic {topic:?}")));
            }
            body.binary()?;
        }
        if username && !printable(body.string()?) {
            return Err(malformed("a username with control characters"));
        }
        if password {
            body.binary()?;
        }
        if body.rest() != 0 {
            return Err(malformed("bytes after the CONNECT payload"));
        }
        // Only an accepted CONNECT makes a session whose later violations
        // an MQTT 5 client hears of (no DISCONNECT before a CONNACK).
        self.level = Some(level);
        self.keep_alive = keep_alive;
        self.client_id = Some(client_id.to_owned());
        self.session_ends = session_ends;
        Ok(Checked::Pass)
    }
}

/// Why checking stopped before the end of the bytes.
enum End {
    /// After a DISCONNECT.
    Last,
    /// Answer and close.
    Answer(Vec<u8>, String),
    /// A violation.
    Violation(Violation),
}

enum Checked {
    Pass,
    /// The last packet (DISCONNECT): forward it, then close.
    Last,
    /// Answer and close.
    Answer(Vec<u8>, String),
}

/// Told of each connection's client id as the front learns of its life,
/// ahead of the engine ([`crate::reconnect::SessionEnds`]).
pub trait Connections: Send + Sync {
    /// A CONNECT with `client_id` was accepted and goes on to the engine.
    fn opened(&self, client_id: &str);
    /// The client has gone (a DISCONNECT, its end of stream, a refusal),
    /// and its session ends with the connection.
    fn ending(&self, client_id: &str);
    /// The connection is over on both sides.
    fn closed(&self, client_id: &str);
}

/// [`Connections`] shared by every connection of the front.
pub type SharedConnections = std::sync::Arc<dyn Connections>;

/// Serves a public listener — plaintext, or TLS ended here with `tls` —:
/// each accepted connection goes to the engine's listener at `engine`
/// (loopback, PROXY protocol on) through a [`Validator`]. Runs until the
/// listener fails.
pub async fn serve(
    listener: TcpListener,
    engine: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    connections: SharedConnections,
) -> std::io::Result<()> {
    loop {
        let (client, peer) = listener.accept().await?;
        let tls = tls.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let ended = async {
                client.set_nodelay(true)?;
                let local = client.local_addr()?;
                match tls {
                    None => connection(client, peer, local, engine, limits, connections).await,
                    Some(tls) => {
                        let client = tokio::time::timeout(HANDSHAKE, tls.accept(client))
                            .await
                            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
                        connection(client, peer, local, engine, limits, connections).await
                    }
                }
            };
            if let Err(e) = ended.await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// The front's TLS side: the broker's certificate chain and key (PEM), and
/// with `client_ca`, client certificates required and checked against it.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading the certificates in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the key {}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for root in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
                roots.add(root.with_context(|| format!("reading {}", ca.display()))?)?;
            }
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
                .build()
                .context("the client CA")?
        }
        None => rustls::server::WebPkiClientVerifier::no_client_auth(),
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the certificate and its key")?;
    Ok(TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// A PROXY protocol v1 header naming the client and the address it reached.
fn proxy_header(peer: SocketAddr, local: SocketAddr) -> String {
    let family = if peer.is_ipv4() && local.is_ipv4() {
        "TCP4"
    } else {
        "TCP6"
    };
    let ip = |a: SocketAddr| match (family, a.ip()) {
        ("TCP6", std::net::IpAddr::V4(v4)) => v4.to_ipv6_mapped().to_string(),
        (_, ip) => ip.to_string(),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        ip(peer),
        ip(local),
        peer.port(),
        local.port()
    )
}

/// How long the engine may take to answer and close once the client's side
/// of a connection is over.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

async fn connection<S>(
    client: S,
    peer: SocketAddr,
    local: SocketAddr,
    engine: SocketAddr,
    limits: Limits,
    connections: SharedConnections,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let upstream = TcpStream::connect(engine).await?;
    upstream.set_nodelay(true)?;
    let (from_client, mut to_client) = tokio::io::split(client);
    let (mut from_engine, mut to_engine) = upstream.into_split();
    to_engine.write_all(proxy_header(peer, local).as_bytes()).await?;
    // The engine's answers go back as they come. Once the client's side is
    // over (a DISCONNECT, a refusal, or its end of stream), the engine sees
    // the end of its stream, answers what it had (a CONNACK) and closes;
    // then the last words of a refusal follow, and the client's connection
    // closes — at the latest [`DRAIN`] after its side ended.
    let (last_words, mut said) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut words: Option<Vec<u8>> = None;
        let drained = tokio::time::sleep(DRAIN);
        tokio::pin!(drained);
        loop {
            tokio::select! {
                read = from_engine.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                },
                got = &mut said, if words.is_none() => {
                    words = Some(got.unwrap_or_default());
                    drained.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                }
                _ = &mut drained, if words.is_some() => break,
            }
        }
        // The engine may be done before the client's side is (it closed
        // first, as after refusing a login): the client's connection closes
        // now, with the last words if they were already said.
        if words.is_none() {
            words = said.try_recv().ok();
        }
        if let Some(words) = words.filter(|w| !w.is_empty()) {
            let _ = to_client.write_all(&words).await;
        }
        let _ = to_client.shutdown().await;
    });
    let mut validator = Validator::new(limits);
    let mut opened: Option<String> = None;
    let relayed = relay(
        &mut validator,
        &mut opened,
        from_client,
        to_engine,
        last_words,
        peer,
        connections.as_ref(),
    )
    .await;
    client_gone(&validator, connections.as_ref());
    let _ = down.await;
    if let Some(id) = opened {
        connections.closed(&id);
    }
    relayed
}

/// The client's side of a connection: its packets, checked by `validator`,
/// on to the engine until its side is over; then the engine sees the end of
/// its stream.
async fn relay<R, W>(
    validator: &mut Validator,
    opened: &mut Option<String>,
    mut from_client: R,
    mut to_engine: W,
    last_words: tokio::sync::oneshot::Sender<Vec<u8>>,
    peer: SocketAddr,
    connections: &dyn Connections,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 << 10];
    let mut last_words = Some(last_words);
    'up: loop {
        let n = match validator.silence_allowed() {
            Some(allowed) => match tokio::time::timeout(allowed, from_client.read(&mut buf)).await {
                Ok(read) => read?,
                // Silent past 1.5 × its keep-alive: the connection is lost
                // (the engine, seeing its end, publishes the will).
                Err(_) => {
                    debug!(%peer, "keep-alive expired");
                    break;
                }
            },
            None => from_client.read(&mut buf).await?,
        };
        if n == 0 {
            break;
        }
        let connecting = validator.client_id().is_none();
        let steps = validator.push(&buf[..n]);
        if let Some(id) = validator.client_id().filter(|id| connecting && !id.is_empty()) {
            connections.opened(id);
            *opened = Some(id.to_owned());
        }
        for step in steps {
            match step {
                Step::Forward(bytes) => to_engine.write_all(&bytes).await?,
                Step::ForwardAndClose(bytes) => {
                    // Before the engine has the DISCONNECT: the client may
                    // reconnect as soon as it has sent it.
                    client_gone(validator, connections);
                    to_engine.write_all(&bytes).await?;
                    if let Some(words) = last_words.take() {
                        let _ = words.send(Vec::new());
                    }
                    break 'up;
                }
                Step::Refuse { answer, why } => {
                    warn!(%peer, why, "malformed or forbidden MQTT packet: closing the connection");
                    if let Some(words) = last_words.take() {
                        let _ = words.send(answer);
                    }
                    break 'up;
                }
            }
        }
    }
    // The engine sees the end of the stream after the last packet it got.
    if let Some(words) = last_words.take() {
        let _ = words.send(Vec::new());
    }
    let _ = to_engine.shutdown().await;
    Ok(())
}

/// The client of `validator` has gone: `connections` hears of it when its
/// session ends with the connection.
fn client_gone(validator: &Validator, connections: &dyn Connections) {
    if let Some(id) = validator
        .client_id()
        .filter(|id| !id.is_empty() && validator.session_ends())
    {
        connections.ending(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mut n = body.len();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn connect(level: u8, flags: u8, client_id: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut body = string(b"MQTT");
        body.extend_from_slice(&[level, flags, 0, 30]);
        if level == 5 {
            body.push(0);
        }
        body.extend(string(client_id));
        body.extend_from_slice(rest);
        packet(0x10, &body)
    }

    const LIMIT: Limits = Limits {
        max_packet: 1 << 20,
        receive_maximum: 2,
        topic_alias_maximum: 4,
    };

    fn refused(steps: &[Step]) -> Option<&Vec<u8>> {
        steps.iter().find_map(|s| match s {
            Step::Refuse { answer, .. } => Some(answer),
            _ => None,
        })
    }

    #[test]
    fn a_good_session_passes_byte_for_byte() {
        let mut v = Validator::new(LIMIT);
        let mut bytes = connect(4, 0b10, b"pos-1", &[]);
        let mut publish = string(b"stores/s1/sales");
        publish.extend_from_slice(&[0, 1]);
        publish.extend_from_slice(b"{}");
        bytes.extend(packet(0x32, &publish));
        let mut subscribe = vec![0, 2];
        subscribe.extend(string(b"stores/s1/acks/pos-1"));
        subscribe.push(1);
        bytes.extend(packet(0x82, &subscribe));
        bytes.extend([0xc0, 0]);
        // Fed a byte at a time, as a slow line delivers it.
        let mut forwarded = Vec::new();
        for b in &bytes {
            for step in v.push(std::slice::from_ref(b)) {
                match step {
                    Step::Forward(f) => forwarded.extend(f),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(forwarded, bytes);
        assert_eq!(
            v.silence_allowed(),
            Some(std::time::Duration::from_secs(45)),
            "1.5 × 30 s"
        );
        let steps = v.push(&[0xe0, 0]);
        assert_eq!(steps, vec![Step::ForwardAndClose(vec![0xe0, 0])], "DISCONNECT closes");
    }

    #[test]
    fn every_class_of_malformed_packet_is_refused() {
        // (what, bytes, the answer before the close)
        type Case = (&'static str, Vec<u8>, Option<Vec<u8>>);
        let cases: Vec<Case> = vec![
            (
                "protocol level 2",
                connect(2, 0b10, b"a", &[]),
                Some(vec![0x20, 2, 0, 1]),
            ),
            (
                "protocol level 6",
                connect(6, 0b10, b"a", &[]),
                Some(vec![0x20, 2, 0, 1]),
            ),
            ("reserved connect flag", connect(4, 0b11, b"a", &[]), Some(vec![])),
            ("will qos without will", connect(4, 0b1010, b"a", &[]), Some(vec![])),
            (
                "will retain without will",
                connect(4, 0b10_0010, b"a", &[]),
                Some(vec![]),
            ),
            (
                "password without username",
                connect(4, 0b100_0010, b"a", &string(b"pw")),
                Some(vec![]),
            ),
            (
                "control character in client id",
                connect(4, 0b10, b"a\x01b", &[]),
                Some(vec![0x20, 2, 0, 2]),
            ),
            ("invalid UTF-8 client id", connect(4, 0b10, b"a\xff", &[]), Some(vec![])),
            ("U+0000 in client id", connect(4, 0b10, b"a\0", &[]), Some(vec![])),
            (
                "wildcard will topic",
                connect(4, 0b110, b"a", &[string(b"t/#"), string(b"x")].concat()),
                Some(vec![]),
            ),
            ("first packet not CONNECT", vec![0xc0, 0], Some(vec![])),
        ];
        for (what, bytes, answer) in cases {
            let steps = Validator::new(LIMIT).push(&bytes);
            assert_eq!(refused(&steps), answer.as_ref(), "{what}: {steps:?}");
        }
        // After a good 3.1.1 CONNECT:
        let after: Vec<(&str, Vec<u8>)> = vec![
            ("PINGREQ with a body", vec![0xc0, 1, 0]),
            (
                "SUBSCRIBE with reserved flags",
                packet(0x80, &[[0, 1].as_slice(), &string(b"a"), &[0]].concat()),
            ),
            (
                "SUBSCRIBE with reserved option bits",
                packet(0x82, &[[0, 1].as_slice(), &string(b"a"), &[0b100]].concat()),
            ),
            ("SUBSCRIBE without filters", packet(0x82, &[0, 1])),
            ("PUBLISH to a wildcard topic", packet(0x30, &string(b"a/+"))),
            (
                "PUBLISH with QoS 3",
                packet(0x36, &[string(b"a").as_slice(), &[0, 1]].concat()),
            ),
            ("a second CONNECT", connect(4, 0b10, b"a", &[])),
        ];
        for (what, bytes) in after {
            let mut v = Validator::new(LIMIT);
            assert!(refused(&v.push(&connect(4, 0b10, b"a", &[]))).is_none());
            let steps = v.push(&bytes);
            assert_eq!(refused(&steps), Some(&vec![]), "{what}: {steps:?}");
        }
        // An MQTT 5 client hears why: DISCONNECT 0x81 (malformed).
        let mut v = Validator::new(LIMIT);
        assert!(refused(&v.push(&connect(5, 0b10, b"a", &[]))).is_none());
        assert_eq!(refused(&v.push(&[0xc0, 1, 0])), Some(&vec![0xe0, 1, 0x81]));
        // Nothing after a refusal goes on.
        assert!(v.push(&[0xc0, 0]).is_empty());
        // A packet announced larger than the limit is refused from its
        // header, before its body is buffered: 0x95 to an MQTT 5 client.
        let mut v = Validator::new(Limits {
            max_packet: 1024,
            ..LIMIT
        });
        assert!(refused(&v.push(&connect(5, 0b10, b"a", &[]))).is_none());
        assert_eq!(refused(&v.push(&[0x30, 0xff, 0xff, 0x7f])), Some(&vec![0xe0, 1, 0x95]));
    }

    /// An MQTT 5 PUBLISH of `topic` with packet id 1 (QoS 2) and `props`.
    fn publish5(qos: u8, id: u16, topic: &[u8], props: &[u8]) -> Vec<u8> {
        let mut body = string(topic);
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(b"x");
        packet(0x30 | (qos << 1), &body)
    }

    fn mqtt5() -> Validator {
        let mut v = Validator::new(LIMIT);
        assert!(refused(&v.push(&connect(5, 0b10, b"a", &[]))).is_none());
        v
    }

    #[test]
    fn topic_aliases_are_held_to_what_the_broker_announces() {
        // Set, then used by an empty topic: both pass.
        let mut v = mqtt5();
        let set = publish5(0, 0, b"t/a", &[0x23, 0, 1]);
        let used = publish5(0, 0, b"", &[0x23, 0, 1]);
        assert!(refused(&v.push(&set)).is_none());
        assert!(refused(&v.push(&used)).is_none());
        // 0 and above the maximum: Topic Alias invalid.
        for alias in [0u8, 5] {
            let mut v = mqtt5();
            let steps = v.push(&publish5(0, 0, b"t/a", &[0x23, 0, alias]));
            assert_eq!(refused(&steps), Some(&vec![0xe0, 1, 0x94]), "alias {alias}");
        }
        // Never set on this connection, or no alias at all: protocol error.
        for props in [[0x23u8, 0, 2].as_slice(), &[]] {
            let mut v = mqtt5();
            assert!(refused(&v.push(&set)).is_none());
            let steps = v.push(&publish5(0, 0, b"", props));
            assert_eq!(refused(&steps), Some(&vec![0xe0, 1, 0x82]), "{props:?}");
        }
        // An unknown property is malformed.
        let mut v = mqtt5();
        let steps = v.push(&publish5(0, 0, b"t/a", &[0x7f, 0]));
        assert_eq!(refused(&steps), Some(&vec![0xe0, 1, 0x81]));
    }

    #[test]
    fn unreleased_qos2_publishes_beyond_the_receive_maximum_disconnect() {
        let mut v = mqtt5();
        for id in [1, 2, 2] {
            // The same id again is a retransmission, not a new publish.
            assert!(refused(&v.push(&publish5(2, id, b"t/a", &[]))).is_none(), "{id}");
        }
        let steps = v.push(&publish5(2, 3, b"t/a", &[]));
        assert_eq!(refused(&steps), Some(&vec![0xe0, 1, 0x93]));
        // A PUBREL frees its place.
        let mut v = mqtt5();
        for id in [1, 2] {
            assert!(refused(&v.push(&publish5(2, id, b"t/a", &[]))).is_none());
        }
        assert!(refused(&v.push(&packet(0x62, &[0, 1]))).is_none());
        assert!(refused(&v.push(&publish5(2, 3, b"t/a", &[]))).is_none());
        // A client's own smaller Receive Maximum is what the engine announces.
        let mut v = Validator::new(Limits {
            receive_maximum: 100,
            ..LIMIT
        });
        let mut body = string(b"MQTT");
        body.extend_from_slice(&[5, 0b10, 0, 30, 3, 0x21, 0, 1]);
        body.extend(string(b"a"));
        assert!(refused(&v.push(&packet(0x10, &body))).is_none());
        assert!(refused(&v.push(&publish5(2, 1, b"t/a", &[]))).is_none());
        let steps = v.push(&publish5(2, 2, b"t/a", &[]));
        assert_eq!(refused(&steps), Some(&vec![0xe0, 1, 0x93]));
    }

    #[test]
    fn the_proxy_header_names_the_client() {
        let peer: SocketAddr = "10.1.2.3:40000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:1883".parse().expect("addr");
        assert_eq!(
            proxy_header(peer, local),
            "PROXY TCP4 10.1.2.3 127.0.0.1 40000 1883\r\n"
        );
    }
}
