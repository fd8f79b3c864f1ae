//! A request's arguments read as a command: names and options checked the
//! way Redis checks them, with Redis's error texts, so that a client sees
//! the same reply from ringcache and from redis-server. No IO here.

use std::time::Duration;

use bytes::Bytes;

use super::frame::Reply;

/// When a write applies (`SET ... NX|XX`, `EXPIRE ... NX|XX|GT|LT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    Always,
    /// NX: only if the key has no value (SET) or no TTL (EXPIRE).
    IfAbsent,
    /// XX: only if the key has a value (SET) or a TTL (EXPIRE).
    IfPresent,
    /// GT / LT (EXPIRE): only if the new expiry is later / earlier.
    IfLater,
    IfEarlier,
}

/// The expiry a SET gives its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    None,
    /// In this long (EX, PX).
    In(Duration),
    /// At this Unix time in milliseconds (EXAT, PXAT).
    At(u64),
    /// Whatever the key has now (KEEPTTL).
    Keep,
}

/// When an EXPIRE sets the key to expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireAt {
    /// Relative, in milliseconds (may be zero or negative: delete).
    In(i64),
    /// Absolute Unix time in milliseconds.
    At(i64),
}

/// `CLIENT TRACKING` options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tracking {
    pub on: bool,
    pub bcast: bool,
    pub prefixes: Vec<Bytes>,
    pub noloop: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    // The connection's own commands, answered without a data node.
    Ping(Option<Bytes>),
    Echo(Bytes),
    Hello {
        version: Option<i64>,
        auth: Option<(Bytes, Bytes)>,
        setname: Option<Bytes>,
    },
    Auth {
        user: Option<Bytes>,
        password: Bytes,
    },
    Select(i64),
    Quit,
    Reset,
    ClientSetName(Bytes),
    ClientGetName,
    ClientId,
    ClientSetInfo,
    ClientTracking(Tracking),
    ClientTrackingInfo,
    CommandInfo,
    CommandCount,
    CommandDocs,
    Info(Option<String>),
    // Keys.
    Get(Bytes),
    Set {
        key: Bytes,
        value: Bytes,
        expiry: Expiry,
        only: Only,
        get: bool,
    },
    Del(Vec<Bytes>),
    Exists(Vec<Bytes>),
    Expire {
        key: Bytes,
        at: ExpireAt,
        only: Only,
    },
    Persist(Bytes),
    Ttl {
        key: Bytes,
        millis: bool,
    },
    MGet(Vec<Bytes>),
    MSet(Vec<(Bytes, Bytes)>),
    IncrBy(Bytes, i64),
    DbSize,
    FlushAll,
}

impl Command {
    /// Reads nothing the commands before it in a pipeline may change, and
    /// changes nothing: it may run beside the reads before and after it.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::Get(_)
                | Command::Exists(_)
                | Command::Ttl { .. }
                | Command::MGet(_)
                | Command::DbSize
        )
    }

    /// Runs against the data nodes (the rest change or read the
    /// connection's own state).
    pub fn is_data(&self) -> bool {
        self.is_read()
            || matches!(
                self,
                Command::Set { .. }
                    | Command::Del(_)
                    | Command::Expire { .. }
                    | Command::Persist(_)
                    | Command::MSet(_)
                    | Command::IncrBy(..)
                    | Command::FlushAll
            )
    }

    /// The keys a tracking client is told about when they change.
    pub fn read_keys(&self) -> &[Bytes] {
        match self {
            Command::Get(k) => std::slice::from_ref(k),
            Command::MGet(keys) | Command::Exists(keys) => keys,
            Command::Ttl { key, .. } => std::slice::from_ref(key),
            _ => &[],
        }
    }
}

pub fn syntax() -> Reply {
    Reply::err("ERR syntax error")
}

pub fn not_integer() -> Reply {
    Reply::err("ERR value is not an integer or out of range")
}

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Parses a decimal integer as Redis does (its `string2ll`): digits with an
/// optional '-', no '+', no spaces, no leading zeros, no "-0".
pub fn int(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == b.len(),
        [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical || b.len() > 20 {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// What Redis answers to a command it does not know (with the first
/// arguments, so a client sees which command it sent).
fn unknown(name: &[u8], args: &[Bytes]) -> Reply {
    let show = |b: &[u8]| -> String {
        String::from_utf8_lossy(&b[..b.len().min(128)])
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        show(name)
    );
    for a in args.iter().take(8) {
        text.push_str(&format!("'{}' ", show(a)));
    }
    Reply::Error(text)
}

/// Reads one request's arguments as a command, or the error reply.
pub fn parse(args: &[Bytes]) -> Result<Command, Reply> {
    let Some((name, rest)) = args.split_first() else {
        return Err(Reply::err("ERR empty command"));
    };
    let cmd = upper(name);
    let n = rest.len();
    let need = |ok: bool| if ok { Ok(()) } else { Err(arity(&cmd)) };
    Ok(match cmd.as_str() {
        "PING" => {
            need(n <= 1)?;
            Command::Ping(rest.first().cloned())
        }
        "ECHO" => {
            need(n == 1)?;
            Command::Echo(rest[0].clone())
        }
        "HELLO" => hello(rest)?,
        "AUTH" => match rest {
            [password] => Command::Auth {
                user: None,
                password: password.clone(),
            },
            [user, password] => Command::Auth {
                user: Some(user.clone()),
                password: password.clone(),
            },
            _ => return Err(arity(&cmd)),
        },
        "SELECT" => {
            need(n == 1)?;
            Command::Select(int(&rest[0]).ok_or_else(not_integer)?)
        }
        "QUIT" => Command::Quit,
        "RESET" => Command::Reset,
        "CLIENT" => client(rest)?,
        "COMMAND" => match rest.first().map(|s| upper(s)).as_deref() {
            None => Command::CommandInfo,
            Some("COUNT") => Command::CommandCount,
            Some("DOCS") => Command::CommandDocs,
            Some(_) => return Err(unknown(name, rest)),
        },
        "INFO" => Command::Info(
            rest.first()
                .map(|s| String::from_utf8_lossy(s).to_lowercase()),
        ),
        "GET" => {
            need(n == 1)?;
            Command::Get(rest[0].clone())
        }
        "SET" => {
            need(n >= 2)?;
            set(rest)?
        }
        "DEL" | "UNLINK" => {
            need(n >= 1)?;
            Command::Del(rest.to_vec())
        }
        "EXISTS" => {
            need(n >= 1)?;
            Command::Exists(rest.to_vec())
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
            need(n == 2 || n == 3)?;
            let t = int(&rest[1]).ok_or_else(not_integer)?;
            let ms = |t: i64, unit: i64| {
                t.checked_mul(unit).ok_or_else(|| {
                    Reply::err(format!(
                        "ERR invalid expire time in '{}' command",
                        cmd.to_ascii_lowercase()
                    ))
                })
            };
            let at = match cmd.as_str() {
                "EXPIRE" => ExpireAt::In(ms(t, 1000)?),
                "PEXPIRE" => ExpireAt::In(t),
                "EXPIREAT" => ExpireAt::At(ms(t, 1000)?),
                _ => ExpireAt::At(t),
            };
            let only = match rest.get(2).map(|s| upper(s)).as_deref() {
                None => Only::Always,
                Some("NX") => Only::IfAbsent,
                Some("XX") => Only::IfPresent,
                Some("GT") => Only::IfLater,
                Some("LT") => Only::IfEarlier,
                Some(o) => return Err(Reply::err(format!("ERR Unsupported option {o}"))),
            };
            Command::Expire {
                key: rest[0].clone(),
                at,
                only,
            }
        }
        "PERSIST" => {
            need(n == 1)?;
            Command::Persist(rest[0].clone())
        }
        "TTL" | "PTTL" => {
            need(n == 1)?;
            Command::Ttl {
                key: rest[0].clone(),
                millis: cmd == "PTTL",
            }
        }
        "MGET" => {
            need(n >= 1)?;
            Command::MGet(rest.to_vec())
        }
        "MSET" => {
            need(n >= 2 && n % 2 == 0)?;
            Command::MSet(
                rest.chunks_exact(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect(),
            )
        }
        "INCR" | "DECR" => {
            need(n == 1)?;
            Command::IncrBy(rest[0].clone(), if cmd == "INCR" { 1 } else { -1 })
        }
        "INCRBY" | "DECRBY" => {
            need(n == 2)?;
            let by = int(&rest[1]).ok_or_else(not_integer)?;
            let by = if cmd == "DECRBY" {
                by.checked_neg()
                    .ok_or_else(|| Reply::err("ERR decrement would overflow"))?
            } else {
                by
            };
            Command::IncrBy(rest[0].clone(), by)
        }
        "DBSIZE" => {
            need(n == 0)?;
            Command::DbSize
        }
        "FLUSHALL" | "FLUSHDB" => {
            // ASYNC / SYNC make no difference here: a flush is one call
            // per data node either way.
            match rest.first().map(|s| upper(s)).as_deref() {
                None | Some("ASYNC") | Some("SYNC") if n <= 1 => Command::FlushAll,
                _ => return Err(syntax()),
            }
        }
        _ => return Err(unknown(name, rest)),
    })
}

fn hello(rest: &[Bytes]) -> Result<Command, Reply> {
    let mut version = None;
    let mut auth = None;
    let mut setname = None;
    let mut i = 0;
    if let Some(v) = rest.first() {
        version =
            Some(int(v).ok_or_else(|| {
                Reply::err("ERR Protocol version is not an integer or out of range")
            })?);
        i = 1;
    }
    while i < rest.len() {
        let more = rest.len() - i - 1;
        match upper(&rest[i]).as_str() {
            "AUTH" if more >= 2 => {
                auth = Some((rest[i + 1].clone(), rest[i + 2].clone()));
                i += 3;
            }
            "SETNAME" if more >= 1 => {
                setname = Some(rest[i + 1].clone());
                i += 2;
            }
            o => {
                return Err(Reply::err(format!(
                    "ERR Syntax error in HELLO option '{o}'"
                )))
            }
        }
    }
    Ok(Command::Hello {
        version,
        auth,
        setname,
    })
}

fn client(rest: &[Bytes]) -> Result<Command, Reply> {
    let Some((sub, args)) = rest.split_first() else {
        return Err(arity("client"));
    };
    let sub = upper(sub);
    let need = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Reply::err(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                sub.to_ascii_lowercase()
            )))
        }
    };
    Ok(match sub.as_str() {
        "SETNAME" => {
            need(args.len() == 1)?;
            if args[0].iter().any(|&b| b <= b' ' || b > b'~') {
                return Err(Reply::err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            Command::ClientSetName(args[0].clone())
        }
        "GETNAME" => {
            need(args.is_empty())?;
            Command::ClientGetName
        }
        "ID" => {
            need(args.is_empty())?;
            Command::ClientId
        }
        // Library name and version (redis-py sends them): accepted, unused.
        "SETINFO" => {
            need(args.len() == 2)?;
            Command::ClientSetInfo
        }
        "TRACKINGINFO" => {
            need(args.is_empty())?;
            Command::ClientTrackingInfo
        }
        "TRACKING" => {
            need(!args.is_empty())?;
            let mut t = Tracking {
                on: match upper(&args[0]).as_str() {
                    "ON" => true,
                    "OFF" => false,
                    _ => return Err(syntax()),
                },
                ..Tracking::default()
            };
            let mut i = 1;
            while i < args.len() {
                match upper(&args[i]).as_str() {
                    "BCAST" => t.bcast = true,
                    "NOLOOP" => t.noloop = true,
                    "PREFIX" if i + 1 < args.len() => {
                        i += 1;
                        t.prefixes.push(args[i].clone());
                    }
                    "REDIRECT" | "OPTIN" | "OPTOUT" => {
                        return Err(Reply::err(format!(
                            "ERR CLIENT TRACKING {} is not supported by ringcache: use RESP3 \
                             (HELLO 3) default or BCAST tracking",
                            upper(&args[i])
                        )))
                    }
                    _ => return Err(syntax()),
                }
                i += 1;
            }
            if !t.prefixes.is_empty() && !t.bcast {
                return Err(Reply::err(
                    "ERR PREFIX option requires BCAST mode to be enabled",
                ));
            }
            Command::ClientTracking(t)
        }
        _ => {
            return Err(Reply::err(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&rest[0])
            )))
        }
    })
}

fn set(rest: &[Bytes]) -> Result<Command, Reply> {
    let mut expiry = Expiry::None;
    let mut only = Only::Always;
    let mut get = false;
    let mut i = 2;
    let bad_expire = || Reply::err("ERR invalid expire time in 'set' command");
    while i < rest.len() {
        let opt = upper(&rest[i]);
        let arg = rest.get(i + 1);
        match opt.as_str() {
            "NX" if only == Only::Always => only = Only::IfAbsent,
            "XX" if only == Only::Always => only = Only::IfPresent,
            "GET" if !get => get = true,
            "KEEPTTL" if expiry == Expiry::None => expiry = Expiry::Keep,
            "EX" | "PX" | "EXAT" | "PXAT" if expiry == Expiry::None => {
                let t = arg.and_then(|a| int(a)).ok_or_else(|| {
                    if arg.is_none() {
                        syntax()
                    } else {
                        not_integer()
                    }
                })?;
                if t <= 0 {
                    return Err(bad_expire());
                }
                let ms_per = if matches!(opt.as_str(), "EX" | "EXAT") {
                    1000
                } else {
                    1
                };
                if opt.starts_with('E') || opt.starts_with('P') {
                    let relative = matches!(opt.as_str(), "EX" | "PX");
                    if relative
                        && t.checked_mul(ms_per)
                            .is_none_or(|ms| ms > super::exec::MAX_TTL_MS)
                    {
                        return Err(bad_expire());
                    }
                }
                let t = t as u64;
                expiry = match opt.as_str() {
                    "EX" => Expiry::In(Duration::from_secs(t)),
                    "PX" => Expiry::In(Duration::from_millis(t)),
                    "EXAT" => Expiry::At(t.checked_mul(1000).ok_or_else(bad_expire)?),
                    _ => Expiry::At(t),
                };
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    Ok(Command::Set {
        key: rest[0].clone(),
        value: rest[1].clone(),
        expiry,
        only,
        get,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Bytes> {
        line.split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn p(line: &str) -> Result<Command, Reply> {
        parse(&args(line))
    }

    #[test]
    fn set_options_are_read_as_redis_reads_them() {
        assert_eq!(
            p("set k v ex 10 nx get"),
            Ok(Command::Set {
                key: "k".into(),
                value: "v".into(),
                expiry: Expiry::In(Duration::from_secs(10)),
                only: Only::IfAbsent,
                get: true,
            })
        );
        assert_eq!(p("SET k v NX XX"), Err(syntax()));
        assert_eq!(p("SET k v EX 1 PX 5"), Err(syntax()));
        assert_eq!(p("SET k v EX"), Err(syntax()));
        assert_eq!(p("SET k v EX x"), Err(not_integer()));
        assert_eq!(
            p("SET k v EX 0"),
            Err(Reply::err("ERR invalid expire time in 'set' command"))
        );
        assert_eq!(p("SET k v KEEPTTL EX 1"), Err(syntax()));
    }

    #[test]
    fn arity_and_unknown_commands_have_redis_s_texts() {
        assert_eq!(
            p("GET"),
            Err(Reply::err(
                "ERR wrong number of arguments for 'get' command"
            ))
        );
        assert_eq!(
            p("MSET a 1 b"),
            Err(Reply::err(
                "ERR wrong number of arguments for 'mset' command"
            ))
        );
        assert_eq!(
            p("KEYS *"),
            Err(Reply::err(
                "ERR unknown command 'KEYS', with args beginning with: '*' "
            ))
        );
        assert_eq!(p("INCRBY k +1"), Err(not_integer()));
        for bad in [
            "01",
            "-0",
            " 1",
            "1 ",
            "",
            "-",
            "1e3",
            "99999999999999999999",
        ] {
            assert_eq!(int(bad.as_bytes()), None, "{bad:?}");
        }
        for (good, n) in [("0", 0), ("-12", -12), ("9223372036854775807", i64::MAX)] {
            assert_eq!(int(good.as_bytes()), Some(n));
        }
    }

    #[test]
    fn tracking_options() {
        assert_eq!(
            p("CLIENT TRACKING on BCAST PREFIX a: PREFIX b:"),
            Ok(Command::ClientTracking(Tracking {
                on: true,
                bcast: true,
                prefixes: vec!["a:".into(), "b:".into()],
                noloop: false,
            }))
        );
        assert!(p("CLIENT TRACKING on PREFIX a:").is_err());
        assert!(p("CLIENT TRACKING on REDIRECT 5").is_err());
    }

    #[test]
    fn reads_run_beside_each_other_and_writes_do_not() {
        assert!(p("GET k").unwrap().is_read());
        assert!(p("MGET a b").unwrap().is_read());
        assert!(!p("SET k v").unwrap().is_read());
        assert!(p("SET k v").unwrap().is_data());
        assert!(!p("HELLO 3").unwrap().is_data());
    }
}
