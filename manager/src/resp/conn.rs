//! One RESP connection: requests read, run and answered in order.
//!
//! Pipelined commands run at once where Redis's one-at-a-time order cannot
//! be told apart from it: consecutive reads run side by side, and a write
//! (or a command that changes the connection) starts only once every
//! command before it has finished, and holds back the ones after it. A
//! client therefore always reads its own writes, and replies come back in
//! request order.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::{self, Command};
use super::frame::{self, FrameLimits, Reply};
use super::tracking::{Push, Pushes, TrackingHub};
use super::Front;

/// Commands of one connection in flight at most; a client pipelining more
/// waits (its bytes stay in the kernel's buffers) until replies go out.
const MAX_PIPELINE: usize = 1024;
/// Replies buffered before they are written even though more are coming.
const WRITE_HIGH_WATER: usize = 64 << 10;
/// Invalidations held for one connection before they become one flush.
const HELD_MAX: usize = 1024;
/// A deadline that does not come (re-armed on every turn of the loop).
const FAR: Duration = Duration::from_secs(86_400);

type Running = Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;

/// What one connection remembers between commands.
struct Session {
    id: u64,
    resp3: bool,
    authed: bool,
    name: Option<Bytes>,
    tracking: Option<command::Tracking>,
    pushes: Option<Pushes>,
}

/// An invalidation to send once the replies started before it arrived are
/// out (so a client never applies it before the reply it invalidates).
struct Held {
    after: u64,
    push: Push,
}

pub(super) async fn serve<S>(front: Arc<Front>, mut io: S, stopping: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hub = front.tracking.clone();
    let id = hub.client_id();
    let _untrack = Untrack {
        hub: hub.clone(),
        id,
    };
    let mut s = Session {
        id,
        resp3: false,
        authed: front.auth_token.is_none(),
        name: None,
        tracking: None,
        pushes: None,
    };
    let full = FrameLimits {
        max_bulk: front.max_value_bytes,
        max_args: front.max_args,
        // The largest value and everything else a request may carry.
        max_request: front.max_value_bytes.saturating_add(1 << 20),
    };
    let mut scan = frame::Scan::default();
    let mut rbuf = BytesMut::with_capacity(16 << 10);
    let mut wbuf = BytesMut::with_capacity(16 << 10);
    let mut running: FuturesOrdered<Running> = FuturesOrdered::new();
    // The next command, parsed but waiting for the ones before it.
    let mut next: Option<Result<Command, Reply>> = None;
    let mut write_running = false;
    let mut started: u64 = 0;
    let mut answered: u64 = 0;
    let mut held: Vec<Held> = Vec::new();
    let mut closing = false;
    let mut partial_since: Option<Instant> = None;
    let mut idle_since = Instant::now();
    loop {
        let limits = if s.authed {
            full
        } else {
            FrameLimits::UNAUTHENTICATED
        };
        // Start what may start.
        loop {
            if next.is_none() && !closing {
                match scan.check(&rbuf, &limits) {
                    Ok(true) => {
                        partial_since = None;
                        scan.reset();
                        match frame::take(&mut rbuf) {
                            Ok(args) if args.is_empty() => continue,
                            Ok(args) => next = Some(command::parse(&args)),
                            Err(e) => {
                                next = Some(Err(Reply::err(format!("ERR {e}"))));
                                closing = true;
                            }
                        }
                    }
                    Ok(false) => {
                        if rbuf.is_empty() {
                            partial_since = None;
                        } else if partial_since.is_none() {
                            partial_since = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        next = Some(Err(Reply::err(format!("ERR {e}"))));
                        closing = true;
                    }
                }
            }
            let Some(cmd) = next.take() else { break };
            let cmd = match cmd {
                Ok(c) if !s.authed && !allowed_unauthenticated(&c) => {
                    Err(Reply::err("NOAUTH Authentication required."))
                }
                other => other,
            };
            match cmd {
                Err(reply) => {
                    running.push_back(Box::pin(std::future::ready(reply)));
                    started += 1;
                }
                Ok(c) if c.is_read() => {
                    if write_running || running.len() >= MAX_PIPELINE {
                        next = Some(Ok(c));
                        break;
                    }
                    started += 1;
                    if let Some(t) = &s.tracking {
                        let keys = c.read_keys();
                        if !keys.is_empty() && !hub.track(s.id, keys, t.bcast) {
                            // Not tracked (table full, or an event stream
                            // lagging): invalidated right after its reply,
                            // so the client does not keep it.
                            held.push(Held {
                                after: started,
                                push: Push::Keys(keys.to_vec()),
                            });
                        }
                    }
                    running.push_back(admitted(&front, c));
                }
                Ok(c) if c.is_data() => {
                    if !running.is_empty() {
                        next = Some(Ok(c));
                        break;
                    }
                    started += 1;
                    write_running = true;
                    // A tracking client's own write invalidates what it
                    // cached, in the same write as the reply (as Redis
                    // does): the nodes' events would come too late for a
                    // client that reads the key again at once.
                    if s.tracking.is_some() {
                        if let Some(push) = written(&c) {
                            held.push(Held {
                                after: started,
                                push,
                            });
                        }
                    }
                    running.push_back(admitted(&front, c));
                }
                Ok(c) => {
                    if !running.is_empty() {
                        next = Some(Ok(c));
                        break;
                    }
                    let quit = matches!(c, Command::Quit);
                    // Everything before it is answered: its pushes go out
                    // before the command may turn tracking or RESP3 off.
                    release(&mut held, answered, s.resp3, &mut wbuf);
                    let reply = local(&front, &mut s, c);
                    reply.encode(s.resp3, &mut wbuf);
                    started += 1;
                    answered += 1;
                    if quit {
                        closing = true;
                    }
                }
            }
        }
        release(&mut held, answered, s.resp3, &mut wbuf);
        if held.len() > HELD_MAX {
            // A client far behind on its invalidations drops everything
            // instead, once every reply started so far is out.
            held.clear();
            held.push(Held {
                after: started,
                push: Push::All,
            });
        }
        if closing && running.is_empty() && next.is_none() {
            let _ = tokio::time::timeout(front.idle_timeout, io.write_all(&wbuf)).await;
            let _ = tokio::time::timeout(front.idle_timeout, io.shutdown()).await;
            return;
        }
        // Replies go out when nothing else is ready (one write for a whole
        // pipeline), or once enough are buffered. A client that does not
        // read them for the idle timeout is dropped.
        if !wbuf.is_empty() && (running.is_empty() || wbuf.len() >= WRITE_HIGH_WATER) {
            let write = tokio::select! {
                r = tokio::time::timeout(front.idle_timeout, io.write_all(&wbuf)) => r,
                _ = stopping.cancelled() => return,
            };
            if !matches!(write, Ok(Ok(()))) {
                return;
            }
            wbuf.clear();
        }
        let can_read = !closing && next.is_none() && rbuf.len() < limits.max_request;
        // A request begun and not finished in time closes the connection
        // (slowloris), as does one with nothing to do for the idle timeout;
        // one that tracks keys waits for invalidations, not requests.
        let deadline = match partial_since {
            _ if closing => Instant::now() + FAR,
            Some(t) => t + front.header_read_timeout,
            None if running.is_empty() && s.tracking.is_none() => idle_since + front.idle_timeout,
            None => Instant::now() + FAR,
        };
        let tracked = s.pushes.is_some();
        let pushes = s.pushes.as_mut();
        tokio::select! {
            biased;
            Some(reply) = running.next(), if !running.is_empty() => {
                reply.encode(s.resp3, &mut wbuf);
                answered += 1;
                // Everything else already done goes into the same write.
                while wbuf.len() < WRITE_HIGH_WATER {
                    let Some(Some(reply)) = running.next().now_or_never() else { break };
                    reply.encode(s.resp3, &mut wbuf);
                    answered += 1;
                }
                if running.is_empty() {
                    write_running = false;
                    idle_since = Instant::now();
                }
            }
            push = async { pushes?.recv().await }, if tracked => {
                match push {
                    Some(push) => held.push(Held { after: started, push }),
                    // The hub dropped this client (it fell too far behind):
                    // everything it cached must go.
                    None => {
                        held.push(Held { after: started, push: Push::All });
                        s.pushes = None;
                        s.tracking = None;
                    }
                }
            }
            r = io.read_buf(&mut rbuf), if can_read => {
                match r {
                    Ok(0) | Err(_) => closing = true,
                    Ok(_) => idle_since = Instant::now(),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                // Idle, or stalled mid-request: the commands already
                // running are answered, then the connection closes.
                tracing::debug!(client = s.id, "RESP connection idle or stalled mid-request: closed");
                closing = true;
                partial_since = None;
                rbuf.clear();
            }
            _ = stopping.cancelled(), if !closing => closing = true,
        }
    }
}

/// Sends the held invalidations whose replies are all out.
fn release(held: &mut Vec<Held>, answered: u64, resp3: bool, out: &mut BytesMut) {
    if held.is_empty() {
        return;
    }
    held.retain(|h| {
        if h.after > answered {
            return true;
        }
        if resp3 {
            h.push.reply().encode(true, out);
        }
        false
    });
}

/// What a tracking client that sent write `c` must drop from its cache.
fn written(c: &Command) -> Option<Push> {
    let keys = match c {
        Command::Set { key, .. }
        | Command::Expire { key, .. }
        | Command::Persist(key)
        | Command::IncrBy(key, _) => vec![key.clone()],
        Command::Del(keys) => keys.clone(),
        Command::MSet(pairs) => pairs.iter().map(|(k, _)| k.clone()).collect(),
        Command::FlushAll => return Some(Push::All),
        _ => return None,
    };
    Some(Push::Keys(keys))
}

fn allowed_unauthenticated(c: &Command) -> bool {
    matches!(
        c,
        Command::Auth { .. } | Command::Hello { .. } | Command::Quit | Command::Reset
    )
}

/// A key command, within the in-flight limit the HTTP side shares.
fn admitted(front: &Arc<Front>, c: Command) -> Running {
    let Some(slot) = front.in_flight.enter() else {
        return Box::pin(std::future::ready(Reply::err(
            "TRYAGAIN overloaded, retry later",
        )));
    };
    let front = front.clone();
    Box::pin(async move {
        let reply = front.keys.run(c).await;
        drop(slot);
        reply
    })
}

fn auth(front: &Front, user: Option<&[u8]>, password: &[u8]) -> Result<(), Reply> {
    let Some(token) = &front.auth_token else {
        // Without a token every client is the default user, who has no
        // password (Redis's `nopass`): naming it with any password works.
        if user == Some(b"default".as_slice()) {
            return Ok(());
        }
        if user.is_some() {
            return Err(Reply::err(
                "WRONGPASS invalid username-password pair or user is disabled.",
            ));
        }
        return Err(Reply::err(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        ));
    };
    let user_ok = user.is_none_or(|u| u == b"default");
    if user_ok && ringcache_common::auth::constant_time_eq(password, token.as_bytes()) {
        Ok(())
    } else {
        Err(Reply::err(
            "WRONGPASS invalid username-password pair or user is disabled.",
        ))
    }
}

/// The commands a connection answers itself.
fn local(front: &Front, s: &mut Session, c: Command) -> Reply {
    match c {
        Command::Ping(None) => Reply::Simple("PONG"),
        Command::Ping(Some(m)) | Command::Echo(m) => Reply::Bulk(m),
        Command::Quit => Reply::Ok,
        Command::Select(0) => Reply::Ok,
        Command::Select(_) => Reply::err("ERR DB index is out of range"),
        Command::Auth { user, password } => match auth(front, user.as_deref(), &password) {
            Ok(()) => {
                s.authed = true;
                Reply::Ok
            }
            Err(e) => e,
        },
        Command::Hello {
            version,
            auth: credentials,
            setname,
        } => {
            let resp3 = match version {
                None => s.resp3,
                Some(2) => false,
                Some(3) => true,
                Some(_) => return Reply::err("NOPROTO unsupported protocol version"),
            };
            if let Some((user, password)) = &credentials {
                if let Err(e) = auth(front, Some(user), password) {
                    return e;
                }
                s.authed = true;
            } else if !s.authed {
                return Reply::err(
                    "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                     the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                     client and select the RESP protocol version at the same time",
                );
            }
            if let Some(name) = setname {
                s.name = Some(name);
            }
            if !resp3 && s.tracking.is_some() {
                disable_tracking(front, s);
            }
            s.resp3 = resp3;
            Reply::Map(vec![
                (Reply::bulk("server"), Reply::bulk("redis")),
                (Reply::bulk("version"), Reply::bulk(super::REDIS_VERSION)),
                (Reply::bulk("proto"), Reply::Int(if resp3 { 3 } else { 2 })),
                (Reply::bulk("id"), Reply::Int(s.id as i64)),
                (Reply::bulk("mode"), Reply::bulk("standalone")),
                (Reply::bulk("role"), Reply::bulk("master")),
                (Reply::bulk("modules"), Reply::Array(vec![])),
            ])
        }
        Command::Reset => {
            disable_tracking(front, s);
            s.resp3 = false;
            s.name = None;
            s.authed = front.auth_token.is_none();
            Reply::Simple("RESET")
        }
        Command::ClientSetName(name) => {
            s.name = (!name.is_empty()).then_some(name);
            Reply::Ok
        }
        Command::ClientGetName => s.name.clone().map_or(Reply::Null, Reply::Bulk),
        Command::ClientId => Reply::Int(s.id as i64),
        Command::ClientSetInfo => Reply::Ok,
        Command::ClientTracking(t) => {
            if !t.on {
                disable_tracking(front, s);
                return Reply::Ok;
            }
            if !s.resp3 {
                return Reply::err(
                    "ERR ringcache sends invalidations as RESP3 pushes only: switch with HELLO 3 \
                     first (REDIRECT is not supported)",
                );
            }
            if let Some(old) = &s.tracking {
                if old.bcast != t.bcast {
                    return Reply::err(
                        "ERR You can't switch BCAST mode on/off before disabling tracking for this \
                         client, and then re-enabling it with a different mode.",
                    );
                }
                // Already on: the queue (and what is in it) is kept.
                let mut t = t;
                for p in &old.prefixes {
                    if !t.prefixes.contains(p) {
                        t.prefixes.push(p.clone());
                    }
                }
                front.tracking.set_prefixes(s.id, &t.prefixes);
                s.tracking = Some(t);
                return Reply::Ok;
            }
            match front.tracking.enable(s.id, &t) {
                Some(rx) => {
                    s.pushes = Some(rx);
                    s.tracking = Some(t);
                    Reply::Ok
                }
                None => {
                    Reply::err("ERR client tracking is off on this manager (--resp-tracking false)")
                }
            }
        }
        Command::ClientTrackingInfo => {
            let (flags, prefixes) = match &s.tracking {
                None => (vec![Reply::bulk("off")], vec![]),
                Some(t) => {
                    let mut f = vec![Reply::bulk("on")];
                    if t.bcast {
                        f.push(Reply::bulk("bcast"));
                    }
                    if t.noloop {
                        f.push(Reply::bulk("noloop"));
                    }
                    (f, t.prefixes.iter().cloned().map(Reply::Bulk).collect())
                }
            };
            Reply::Map(vec![
                (Reply::bulk("flags"), Reply::Set(flags)),
                (Reply::bulk("redirect"), Reply::Int(-1)),
                (Reply::bulk("prefixes"), Reply::Array(prefixes)),
            ])
        }
        Command::CommandInfo | Command::CommandDocs => Reply::Array(vec![]),
        Command::CommandCount => Reply::Int(super::COMMANDS.len() as i64),
        Command::Info(section) => Reply::Bulk(front.info(section.as_deref()).into()),
        other => Reply::err(format!(
            "ERR internal error: {other:?} is not a connection command"
        )),
    }
}

fn disable_tracking(front: &Front, s: &mut Session) {
    if s.tracking.take().is_some() {
        front.tracking.disable(s.id);
    }
    s.pushes = None;
}

/// Ends a client's tracking when its connection ends, however it ends.
struct Untrack {
    hub: Arc<TrackingHub>,
    id: u64,
}

impl Drop for Untrack {
    fn drop(&mut self) {
        self.hub.disable(self.id);
    }
}
