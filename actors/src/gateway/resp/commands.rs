//! The commands a RESP connection runs. Plain `GET`, `SET`, `DEL`, `EXISTS` and `MGET` map onto
//! ringkv's reads and writes at the node's default R and W (a `SET` is a blind write, which
//! supersedes what the coordinating replica holds); `RINGKV.GET`, `RINGKV.PUT` and
//! `RINGKV.DEL` expose siblings, the causal context (hex) and per-request R and W. The
//! handshake and housekeeping commands that clients and tools send answer as Redis does. What
//! needs an atomic read-modify-write (INCR, SETNX, MULTI, …) or expiry is refused with why.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_bytes::ByteBuf;

use super::SiblingReply;
use super::auth::{NOAUTH, Password};
use super::frame::{Protocol, Reply, eq_ignore_case};
use crate::context::NodeContext;
use crate::coordinator;
use crate::core::quorum::Consistency;
use crate::metrics::Op;
use crate::protocol::{GetReply, GetRequest, KvError, PutRequest};

/// The Redis version reported to clients; libraries gate features on it, and ringkv speaks the
/// RESP3 of Redis 7.
const REDIS_VERSION: &str = "7.2.0";

/// Commands that only make sense with an atomic read-modify-write.
const ATOMIC: &[&str] = &[
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
    "APPEND",
    "GETSET",
    "GETDEL",
    "SETNX",
    "MSETNX",
    "SETRANGE",
    "MSET",
    "MULTI",
    "EXEC",
    "WATCH",
    "UNWATCH",
    "DISCARD",
    "EVAL",
    "EVALSHA",
    "FCALL",
    "LMOVE",
    "RENAME",
    "RENAMENX",
    "COPY",
];
/// Commands that need expiry.
const EXPIRY: &[&str] = &[
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "TTL",
    "PTTL",
    "PERSIST",
    "SETEX",
    "PSETEX",
    "GETEX",
    "EXPIRETIME",
];
/// Commands that need every key of the cluster.
const SCANS: &[&str] = &["KEYS", "SCAN", "DBSIZE", "FLUSHDB", "FLUSHALL", "RANDOMKEY"];

/// One connection's state.
pub struct Session {
    ctx: Arc<NodeContext>,
    siblings: SiblingReply,
    proto: Protocol,
    closing: bool,
    name: Option<Vec<u8>>,
    id: i64,
    password: Password,
    authenticated: bool,
    peer: SocketAddr,
}

static NEXT_ID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

fn err(msg: impl Into<String>) -> Reply {
    Reply::Error(msg.into())
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn kv_error(e: KvError) -> Reply {
    err(format!("ERR ringkv: {e}"))
}

fn wrong_args(name: &str) -> Reply {
    err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// `ONE|QUORUM|ALL|<n>`, any case.
fn level(arg: &[u8]) -> Result<Consistency, Reply> {
    std::str::from_utf8(arg)
        .map_err(|_| err("ERR consistency must be one, quorum, all or a number"))?
        .to_ascii_lowercase()
        .parse()
        .map_err(|e: String| err(format!("ERR {e}")))
}

impl Session {
    /// A session with the client at `peer`, answering plain `GET` of siblings as `siblings`
    /// says; with a `password`, it serves only once the client authenticated.
    pub fn new(
        ctx: Arc<NodeContext>,
        siblings: SiblingReply,
        password: Password,
        peer: SocketAddr,
    ) -> Session {
        Session {
            ctx,
            siblings,
            proto: Protocol::Resp2,
            closing: false,
            name: None,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            authenticated: !password.required(),
            password,
            peer,
        }
    }

    /// Checks credentials from `AUTH` or `HELLO … AUTH`, and logs a refusal.
    fn authenticate(&mut self, user: Option<&[u8]>, pass: &[u8]) -> Result<(), Reply> {
        match self.password.check(user, pass) {
            Ok(()) => {
                self.authenticated = true;
                Ok(())
            }
            Err(why) => {
                tracing::warn!(peer = %self.peer, "RESP client refused: wrong password");
                Err(err(why))
            }
        }
    }

    /// The protocol replies are encoded in.
    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    /// True once the client asked to close (`QUIT`).
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Runs one command (`args[0]` is its name).
    pub async fn run(&mut self, args: Vec<Vec<u8>>) -> Reply {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let rest = &args[1..];
        if !self.authenticated && !Password::allowed_before_auth(&name) {
            return err(NOAUTH);
        }
        match name.as_str() {
            "PING" => match rest {
                [] => Reply::Simple("PONG".into()),
                [m] => Reply::Bulk(m.clone()),
                _ => wrong_args(&name),
            },
            "ECHO" => match rest {
                [m] => Reply::Bulk(m.clone()),
                _ => wrong_args(&name),
            },
            "QUIT" => {
                self.closing = true;
                ok()
            }
            "HELLO" => self.hello(rest),
            "AUTH" => {
                let checked = match rest {
                    [p] => self.authenticate(None, p),
                    [u, p] => self.authenticate(Some(u), p),
                    _ => return wrong_args(&name),
                };
                checked.map_or_else(|e| e, |()| ok())
            }
            "RESET" => {
                self.proto = Protocol::Resp2;
                self.name = None;
                self.authenticated = !self.password.required();
                Reply::Simple("RESET".into())
            }
            "CLIENT" => self.client(rest),
            "SELECT" => match rest {
                [db] if db.as_slice() == b"0" => ok(),
                [_] => err("ERR DB index is out of range (ringkv has one keyspace: 0)"),
                _ => wrong_args(&name),
            },
            "CONFIG" => config(rest, &name),
            "INFO" => self.info(),
            "COMMAND" => command(rest),
            "READONLY" | "READWRITE" => ok(),
            "GET" => match rest {
                [k] => self.get_one(k).await,
                _ => wrong_args(&name),
            },
            "MGET" if !rest.is_empty() => {
                let mut out = Vec::with_capacity(rest.len());
                for k in rest {
                    out.push(match self.get_one(k).await {
                        Reply::Error(_) => Reply::Null,
                        r => r,
                    });
                }
                Reply::Array(out)
            }
            "SET" => match rest {
                [k, v] => self
                    .put(k, Some(v), None, None)
                    .await
                    .map_or_else(|e| e, |_| ok()),
                [_, _, opt, ..] => set_option_refused(opt),
                _ => wrong_args(&name),
            },
            "DEL" | "UNLINK" if !rest.is_empty() => {
                let mut removed = 0;
                for k in rest {
                    match self.read(k, None).await {
                        Err(e) => return kv_error(e),
                        Ok(r) if r.values.is_empty() => {}
                        Ok(r) => {
                            if let Err(e) = self.put(k, None, Some(r.context.to_vec()), None).await
                            {
                                return e;
                            }
                            removed += 1;
                        }
                    }
                }
                Reply::Integer(removed)
            }
            "EXISTS" if !rest.is_empty() => {
                let mut found = 0;
                for k in rest {
                    match self.read(k, None).await {
                        Err(e) => return kv_error(e),
                        Ok(r) => found += i64::from(!r.values.is_empty()),
                    }
                }
                Reply::Integer(found)
            }
            "RINGKV.GET" => self.ringkv_get(rest).await,
            "RINGKV.PUT" => match rest {
                [k, v, opts @ ..] => self.ringkv_put(k, Some(v), opts).await,
                _ => wrong_args(&name),
            },
            "RINGKV.DEL" => match rest {
                [k, opts @ ..] => self.ringkv_put(k, None, opts).await,
                _ => wrong_args(&name),
            },
            n if ATOMIC.contains(&n) => err(format!(
                "ERR {n} needs an atomic read-modify-write, which ringkv (leaderless, replicated, eventually consistent) does not offer: read with RINGKV.GET and write with RINGKV.PUT and the context"
            )),
            n if EXPIRY.contains(&n) => err(format!("ERR {n}: ringkv keys do not expire")),
            n if SCANS.contains(&n) => err(format!(
                "ERR {n} needs every key of the cluster; ringkv serves single keys only"
            )),
            "MGET" | "DEL" | "UNLINK" | "EXISTS" => wrong_args(&name),
            _ => {
                let mut shown = String::new();
                for a in rest.iter().take(3) {
                    shown.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
                }
                err(format!(
                    "ERR unknown command '{}', with args beginning with: {shown}",
                    String::from_utf8_lossy(&args[0])
                ))
            }
        }
    }

    /// `HELLO [proto [AUTH user pass] [SETNAME name]]`: nothing changes unless all of it is good.
    fn hello(&mut self, rest: &[Vec<u8>]) -> Reply {
        let mut it = rest.iter();
        let mut proto = self.proto;
        if let Some(v) = it.next() {
            match v.as_slice() {
                b"2" => proto = Protocol::Resp2,
                b"3" => proto = Protocol::Resp3,
                _ => return err("NOPROTO unsupported protocol version"),
            }
        }
        let mut name = None;
        let mut credentials = None;
        while let Some(opt) = it.next() {
            if eq_ignore_case(opt, "AUTH") {
                match (it.next(), it.next()) {
                    (Some(u), Some(p)) => credentials = Some((u, p)),
                    _ => return err("ERR syntax error in HELLO option 'auth'"),
                }
            } else if eq_ignore_case(opt, "SETNAME") {
                match it.next() {
                    Some(n) => name = Some(n.clone()),
                    None => return err("ERR syntax error in HELLO option 'setname'"),
                }
            } else {
                return err(format!(
                    "ERR syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                ));
            }
        }
        match credentials {
            Some((u, p)) => {
                if let Err(e) = self.authenticate(Some(u), p) {
                    return e;
                }
            }
            None if !self.authenticated => {
                return err(
                    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                );
            }
            None => {}
        }
        self.proto = proto;
        if name.is_some() {
            self.name = name;
        }
        let s = |v: &str| Reply::Bulk(v.as_bytes().to_vec());
        Reply::Map(vec![
            (s("server"), s("redis")),
            (s("version"), s(REDIS_VERSION)),
            (
                s("proto"),
                Reply::Integer(if self.proto == Protocol::Resp3 { 3 } else { 2 }),
            ),
            (s("id"), Reply::Integer(self.id)),
            (s("mode"), s("standalone")),
            (s("role"), s("master")),
            (s("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client(&mut self, rest: &[Vec<u8>]) -> Reply {
        let Some(sub) = rest.first() else {
            return wrong_args("client");
        };
        let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
        match (sub.as_str(), &rest[1..]) {
            ("SETNAME", [n]) => {
                self.name = Some(n.clone());
                ok()
            }
            ("GETNAME", []) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            ("ID", []) => Reply::Integer(self.id),
            ("SETINFO", [_, _]) | ("NO-EVICT", [_]) | ("NO-TOUCH", [_]) => ok(),
            ("INFO", []) => Reply::Bulk(
                format!(
                    "id={} name={} db=0 resp={}\n",
                    self.id,
                    String::from_utf8_lossy(self.name.as_deref().unwrap_or_default()),
                    if self.proto == Protocol::Resp3 { 3 } else { 2 }
                )
                .into_bytes(),
            ),
            _ => err(format!(
                "ERR unknown subcommand or wrong number of arguments for 'CLIENT|{sub}'"
            )),
        }
    }

    fn info(&self) -> Reply {
        let placement = self.ctx.ring.load();
        let (ops, p99) = self.ctx.stats.summary();
        let text = format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nringkv_version:{}\r\nringkv_node:{}\r\nprocess_id:{}\r\n\r\n# Clients\r\nconnected_clients:1\r\n\r\n# Persistence\r\nloading:0\r\naof_enabled:0\r\n\r\n# Replication\r\nrole:master\r\n\r\n# Ringkv\r\nring_epoch:{}\r\nring_members:{}\r\nreplicas:{}\r\nops_per_sec:{ops:.0}\r\np99_ms:{p99:.2}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.ctx.node_id,
            std::process::id(),
            placement.epoch,
            placement.members.len(),
            placement.replicas(),
        );
        match self.proto {
            Protocol::Resp3 => Reply::Verbatim(text),
            Protocol::Resp2 => Reply::Bulk(text.into_bytes()),
        }
    }

    async fn read(&self, key: &[u8], r: Option<Consistency>) -> Result<GetReply, KvError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (started, counted) = (std::time::Instant::now(), self.ctx.clone());
        let req = GetRequest {
            key: ByteBuf::from(key.to_vec()),
            r,
            timeout_ms: None,
        };
        coordinator::get_fenced(self.ctx.clone(), req, move |r| {
            counted
                .metrics
                .request(Op::Get, r.as_ref().err(), started.elapsed());
            let _ = tx.send(r);
        })
        .await;
        rx.await
            .unwrap_or(Err(KvError::Unavailable { needed: 1, got: 0 }))
    }

    async fn get_one(&self, key: &[u8]) -> Reply {
        match self.read(key, None).await {
            Err(e) => kv_error(e),
            Ok(r) => match r.values.len() {
                0 => Reply::Null,
                1 => Reply::Bulk(r.values[0].to_vec()),
                n if self.siblings == SiblingReply::Error => err(format!(
                    "ERR key has {n} concurrent values (siblings): read them with RINGKV.GET"
                )),
                _ => Reply::Bulk(
                    r.values
                        .iter()
                        .max()
                        .map(|v| v.to_vec())
                        .unwrap_or_default(),
                ),
            },
        }
    }

    async fn put(
        &self,
        key: &[u8],
        value: Option<&Vec<u8>>,
        context: Option<Vec<u8>>,
        w: Option<Consistency>,
    ) -> Result<Vec<u8>, Reply> {
        let req = PutRequest {
            key: ByteBuf::from(key.to_vec()),
            value: value.map(|v| ByteBuf::from(v.clone())),
            context: context.map(ByteBuf::from),
            w,
            timeout_ms: None,
            not_after_ms: None,
        };
        let (started, op) = (std::time::Instant::now(), Op::of(&req));
        let r = coordinator::put(self.ctx.clone(), req, true).await;
        self.ctx
            .metrics
            .request(op, r.as_ref().err(), started.elapsed());
        r.map(|r| r.context.to_vec()).map_err(kv_error)
    }

    /// `RINGKV.GET key [R level]`: every sibling and the context, as a two-element array.
    async fn ringkv_get(&self, rest: &[Vec<u8>]) -> Reply {
        let (key, r) = match rest {
            [k] => (k, None),
            [k, opt, l] if eq_ignore_case(opt, "R") => match level(l) {
                Ok(l) => (k, Some(l)),
                Err(e) => return e,
            },
            _ => return err("ERR usage: RINGKV.GET key [R one|quorum|all|n]"),
        };
        match self.read(key, r).await {
            Err(e) => kv_error(e),
            Ok(r) => Reply::Array(vec![
                Reply::Array(r.values.iter().map(|v| Reply::Bulk(v.to_vec())).collect()),
                Reply::Bulk(hex(&r.context).into_bytes()),
            ]),
        }
    }

    /// `RINGKV.PUT key value [CONTEXT hex] [W level]` and `RINGKV.DEL key [CONTEXT hex] [W
    /// level]`: answer the new version's context.
    async fn ringkv_put(&self, key: &[u8], value: Option<&Vec<u8>>, opts: &[Vec<u8>]) -> Reply {
        let (mut context, mut w) = (None, None);
        let mut it = opts.iter();
        while let Some(opt) = it.next() {
            let Some(arg) = it.next() else {
                return err("ERR usage: RINGKV.PUT key value [CONTEXT hex] [W level]");
            };
            if eq_ignore_case(opt, "CONTEXT") {
                match unhex(arg) {
                    Some(c) => context = Some(c),
                    None => return err("ERR CONTEXT must be the hex string RINGKV.GET returned"),
                }
            } else if eq_ignore_case(opt, "W") {
                match level(arg) {
                    Ok(l) => w = Some(l),
                    Err(e) => return e,
                }
            } else {
                return err(format!(
                    "ERR unknown option '{}': CONTEXT and W are known",
                    String::from_utf8_lossy(opt)
                ));
            }
        }
        match self.put(key, value, context, w).await {
            Ok(c) => Reply::Bulk(hex(&c).into_bytes()),
            Err(e) => e,
        }
    }
}

fn set_option_refused(opt: &[u8]) -> Reply {
    let o = String::from_utf8_lossy(opt).to_ascii_uppercase();
    match o.as_str() {
        "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" => {
            err(format!("ERR SET {o}: ringkv keys do not expire"))
        }
        "NX" | "XX" | "GET" => err(format!(
            "ERR SET {o} needs an atomic read-modify-write, which ringkv (leaderless, replicated, eventually consistent) does not offer: read with RINGKV.GET and write with RINGKV.PUT and the context"
        )),
        _ => err("ERR syntax error"),
    }
}

/// `CONFIG GET pattern…` answers the few settings tools look at; `CONFIG SET` is refused.
fn config(rest: &[Vec<u8>], name: &str) -> Reply {
    const KNOWN: &[(&str, &str)] = &[
        ("save", ""),
        ("appendonly", "no"),
        ("databases", "1"),
        ("maxmemory", "0"),
        ("maxclients", "1024"),
        ("timeout", "0"),
    ];
    match rest.split_first() {
        Some((sub, pats)) if eq_ignore_case(sub, "GET") && !pats.is_empty() => {
            let mut out = Vec::new();
            for p in pats {
                let p = String::from_utf8_lossy(p).to_ascii_lowercase();
                for (k, v) in KNOWN {
                    if glob(&p, k)
                        && !out
                            .iter()
                            .any(|(x, _): &(Reply, Reply)| *x == Reply::Bulk(k.as_bytes().to_vec()))
                    {
                        out.push((
                            Reply::Bulk(k.as_bytes().to_vec()),
                            Reply::Bulk(v.as_bytes().to_vec()),
                        ));
                    }
                }
            }
            Reply::Map(out)
        }
        Some((sub, _)) if eq_ignore_case(sub, "RESETSTAT") => ok(),
        Some((sub, _)) if eq_ignore_case(sub, "SET") => {
            err("ERR CONFIG SET is not offered: ringkv is configured by cluster.toml")
        }
        _ => wrong_args(name),
    }
}

/// Redis-style glob with `*` and `?` only.
fn glob(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

/// `COMMAND`, `COMMAND COUNT|DOCS|INFO`: enough for clients that probe it at connect.
fn command(rest: &[Vec<u8>]) -> Reply {
    match rest.first() {
        None => Reply::Array(Vec::new()),
        Some(s) if eq_ignore_case(s, "COUNT") => Reply::Integer(0),
        Some(s) if eq_ignore_case(s, "DOCS") => Reply::Map(Vec::new()),
        Some(s) if eq_ignore_case(s, "INFO") => {
            Reply::Array(rest[1..].iter().map(|_| Reply::Null).collect())
        }
        Some(_) => err("ERR unknown subcommand for 'COMMAND'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_through_hex_and_bad_hex_is_refused() {
        let c = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&c), "0001abff");
        assert_eq!(unhex(b"0001abff"), Some(c));
        assert_eq!(unhex(b"0g"), None);
        assert_eq!(unhex(b"abc"), None);
    }

    #[test]
    fn config_patterns_glob_like_redis() {
        assert!(glob("*", "save"));
        assert!(glob("app*", "appendonly"));
        assert!(glob("sa?e", "save"));
        assert!(!glob("save", "saved"));
        let Reply::Map(m) = config(
            &[b"GET".to_vec(), b"save".to_vec(), b"*only".to_vec()],
            "CONFIG",
        ) else {
            panic!("a map")
        };
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn set_options_say_why_they_are_refused() {
        let Reply::Error(e) = set_option_refused(b"nx") else {
            panic!()
        };
        assert!(e.contains("atomic read-modify-write"), "{e}");
        let Reply::Error(e) = set_option_refused(b"EX") else {
            panic!()
        };
        assert!(e.contains("do not expire"), "{e}");
    }
}
