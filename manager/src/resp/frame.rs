//! RESP framing: requests out of the read buffer, replies into the write
//! buffer, RESP2 or RESP3 as the connection chose with `HELLO`.
//!
//! Frames are decoded and encoded by the `redis-protocol` crate. It has no
//! limits of its own (a bulk string's announced length, the element count,
//! the nesting depth: a deeply nested array would recurse once per level),
//! so [`check`] walks the headers of the buffered request first: a request
//! is an array of bulk strings, or an inline command line, and an oversized
//! bulk string is refused as soon as its header arrives, before any of its
//! bytes are read.

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Longest bulk string (a value; keys are shorter).
    pub max_bulk: usize,
    /// Most arguments of one command (MSET of many keys).
    pub max_args: usize,
    /// Most bytes of one whole request: also the read buffer's bound.
    pub max_request: usize,
}

impl FrameLimits {
    /// What a connection that has not authenticated yet may send (Redis's
    /// own limits for unauthenticated clients): enough for AUTH and HELLO.
    pub const UNAUTHENTICATED: FrameLimits = FrameLimits {
        max_bulk: 16 << 10,
        max_args: 10,
        max_request: 64 << 10,
    };
}

/// Longest inline command line (`PING\r\n` typed in a telnet session).
pub const MAX_INLINE: usize = 64 << 10;

/// Why a request cannot be read: answered with `-ERR Protocol error: ...`,
/// then the connection is closed (what Redis does: the rest of the stream
/// cannot be trusted to start at a frame boundary).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn bad(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// Reads a `<prefix><digits>\r\n` header at `at`: its number and the offset
/// after it, or None if it is not all buffered yet.
fn header(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(end) = buf[at..].iter().position(|&b| b == b'\r') else {
        if buf.len() - at > 32 {
            return Err(bad(format!("invalid {what} length")));
        }
        return Ok(None);
    };
    let line = &buf[at + 1..at + end];
    if buf.len() < at + end + 2 {
        return Ok(None);
    }
    if buf[at + end + 1] != b'\n' {
        return Err(bad(format!("invalid {what} length")));
    }
    let n = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| bad(format!("invalid {what} length")))?;
    Ok(Some((n, at + end + 2)))
}

/// The walk of the request at the start of the read buffer, resumed where
/// it stopped when more bytes arrive: a request sent a byte at a time costs
/// its length once, not its length squared.
#[derive(Debug, Default)]
pub struct Scan {
    /// Arguments announced by the array header, once read.
    args: Option<usize>,
    /// Arguments whose bytes are all buffered.
    seen: usize,
    /// Offset the walk has reached.
    at: usize,
}

impl Scan {
    /// Checks the request at the start of `buf` against `limits`:
    /// `Ok(true)` when it is complete (then [`take`] it and [`Scan::reset`]),
    /// `Ok(false)` when more bytes are needed.
    pub fn check(&mut self, buf: &[u8], limits: &FrameLimits) -> Result<bool, ProtocolError> {
        match buf.first() {
            None => Ok(false),
            Some(b'*') => {
                let n = match self.args {
                    Some(n) => n,
                    None => {
                        let Some((n, at)) = header(buf, 0, "multibulk")? else {
                            return Ok(false);
                        };
                        if n < 0 || n as usize > limits.max_args {
                            return Err(bad("invalid multibulk length"));
                        }
                        self.args = Some(n as usize);
                        self.at = at;
                        n as usize
                    }
                };
                while self.seen < n {
                    match buf.get(self.at) {
                        None => return Ok(false),
                        Some(b'$') => {}
                        Some(&b) => {
                            return Err(bad(format!("expected '$', got '{}'", b as char)));
                        }
                    }
                    let Some((len, next)) = header(buf, self.at, "bulk")? else {
                        return Ok(false);
                    };
                    if len < 0 || len as usize > limits.max_bulk {
                        return Err(bad("invalid bulk length"));
                    }
                    let end = next + len as usize + 2;
                    if end > limits.max_request {
                        return Err(bad("request too large"));
                    }
                    if buf.len() < end {
                        return Ok(false);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err(bad("bulk string not terminated by CRLF"));
                    }
                    self.at = end;
                    self.seen += 1;
                }
                Ok(true)
            }
            Some(_) => {
                let from = self.at.min(buf.len());
                match buf[from..].iter().position(|&b| b == b'\n') {
                    Some(_) => Ok(true),
                    None if buf.len() > MAX_INLINE.min(limits.max_request) => {
                        Err(bad("too big inline request"))
                    }
                    None => {
                        self.at = buf.len();
                        Ok(false)
                    }
                }
            }
        }
    }

    /// Starts over for the next request.
    pub fn reset(&mut self) {
        *self = Scan::default();
    }
}

/// Takes one complete request (checked by [`Scan::check`]) off the front of
/// `buf`: its arguments, empty for a blank inline line.
pub fn take(buf: &mut BytesMut) -> Result<Vec<Bytes>, ProtocolError> {
    if buf.first() != Some(&b'*') {
        return Ok(inline(buf));
    }
    match decode_bytes_mut(buf) {
        Ok(Some((Frame2::Array(items), _, _))) => items
            .into_iter()
            .map(|f| match f {
                Frame2::BulkString(b) => Ok(b),
                _ => Err(bad("expected a bulk string")),
            })
            .collect(),
        Ok(Some(_)) => Err(bad("expected an array of bulk strings")),
        Ok(None) => Err(bad("incomplete request")),
        Err(e) => Err(bad(e.details().to_string())),
    }
}

/// An inline command: one line, arguments separated by spaces.
fn inline(buf: &mut BytesMut) -> Vec<Bytes> {
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf.split_to(end).freeze();
    if !buf.is_empty() {
        buf.advance(1);
    }
    let line = line.slice(..line.strip_suffix(b"\r").map_or(line.len(), <[u8]>::len));
    line.split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .map(|w| line.slice_ref(w))
        .collect()
}

/// A reply, before it is encoded for the connection's protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok,
    Simple(&'static str),
    /// `-<text>`: the text includes the code (`ERR ...`, `NOAUTH ...`).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Reply>),
    /// A set in RESP3, an array in RESP2.
    Set(Vec<Reply>),
    /// A map in RESP3, a flat array of pairs in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// Out-of-band (RESP3 only).
    Push(Vec<Reply>),
}

impl Reply {
    /// An error reply; line breaks in it (an option echoed back, say)
    /// become spaces, or they would end the reply early and shift every
    /// reply after it.
    pub fn err(text: impl Into<String>) -> Reply {
        let mut text = text.into();
        if text.contains(['\r', '\n']) {
            text = text.replace(['\r', '\n'], " ");
        }
        Reply::Error(text)
    }

    pub fn bulk(text: impl Into<Bytes>) -> Reply {
        Reply::Bulk(text.into())
    }

    fn resp2(self) -> Frame2 {
        match self {
            Reply::Ok => Frame2::SimpleString(Bytes::from_static(b"OK")),
            Reply::Simple(s) => Frame2::SimpleString(Bytes::from_static(s.as_bytes())),
            Reply::Error(e) => Frame2::Error(e.into()),
            Reply::Int(i) => Frame2::Integer(i),
            Reply::Bulk(b) => Frame2::BulkString(b),
            Reply::Null => Frame2::Null,
            Reply::Array(items) | Reply::Push(items) | Reply::Set(items) => {
                Frame2::Array(items.into_iter().map(Reply::resp2).collect())
            }
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.resp2(), v.resp2()])
                    .collect(),
            ),
        }
    }

    fn resp3(self) -> Frame3 {
        match self {
            Reply::Ok => Frame3::SimpleString {
                data: Bytes::from_static(b"OK"),
                attributes: None,
            },
            Reply::Simple(s) => Frame3::SimpleString {
                data: Bytes::from_static(s.as_bytes()),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: e.into(),
                attributes: None,
            },
            Reply::Int(i) => Frame3::Number {
                data: i,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b,
                attributes: None,
            },
            Reply::Null => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.into_iter().map(Reply::resp3).collect(),
                attributes: None,
            },
            Reply::Set(items) => Frame3::Set {
                data: items.into_iter().map(Reply::resp3).collect(),
                attributes: None,
            },
            Reply::Push(items) => Frame3::Push {
                data: items.into_iter().map(Reply::resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Frame3::Map {
                data: pairs
                    .into_iter()
                    .map(|(k, v)| (k.resp3(), v.resp3()))
                    .collect(),
                attributes: None,
            },
        }
    }

    /// Appends the reply to `out` in protocol 2 or 3.
    pub fn encode(self, resp3: bool, out: &mut BytesMut) {
        // Encoding into a growable buffer fails only for frames the crate
        // cannot represent, which `resp2`/`resp3` never build; a failure
        // would still be answered rather than leave the client waiting.
        let r = if resp3 {
            redis_protocol::resp3::encode::complete::extend_encode(out, &self.resp3(), false)
        } else {
            redis_protocol::resp2::encode::extend_encode(out, &self.resp2(), false)
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "a reply could not be encoded");
            out.extend_from_slice(b"-ERR internal error: reply not encodable\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_bulk: 16,
        max_args: 4,
        max_request: 64,
    };

    fn check(buf: &[u8], limits: &FrameLimits) -> Result<bool, ProtocolError> {
        Scan::default().check(buf, limits)
    }

    fn encoded(r: Reply, resp3: bool) -> String {
        let mut out = BytesMut::new();
        r.encode(resp3, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_request_is_complete_only_once_every_bulk_string_is_buffered() {
        let full = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        for cut in 0..full.len() {
            assert_eq!(check(&full[..cut], &LIMITS), Ok(false), "cut at {cut}");
        }
        assert_eq!(check(full, &LIMITS), Ok(true));
        let mut buf = BytesMut::from(&full[..]);
        buf.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        let args = take(&mut buf).unwrap();
        assert_eq!(args, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn an_oversized_bulk_string_is_refused_from_its_header() {
        // Only the header is buffered: refused before its bytes arrive.
        assert!(check(b"*2\r\n$3\r\nSET\r\n$17\r\n", &LIMITS).is_err());
        assert!(check(b"*5\r\n", &LIMITS).is_err(), "too many arguments");
        assert!(check(b"*-1\r\n", &LIMITS).is_err());
        assert!(check(b"*1\r\n$-1\r\n", &LIMITS).is_err());
        assert!(check(b"*1\r\n$x\r\n", &LIMITS).is_err());
        assert!(check(b"*1\r\n$1\r\nab\r\n", &LIMITS).is_err(), "no CRLF");
        // Four bulk strings within the bulk limit, over the request's.
        let over = b"*4\r\n$16\r\naaaaaaaaaaaaaaaa\r\n$16\r\naaaaaaaaaaaaaaaa\r\n$16\r\n";
        assert!(
            check(over, &LIMITS).is_err(),
            "the whole request is bounded"
        );
    }

    #[test]
    fn a_scan_resumes_where_it_stopped() {
        let full = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let mut scan = Scan::default();
        for end in 1..full.len() {
            assert_eq!(scan.check(&full[..end], &LIMITS), Ok(false), "at {end}");
        }
        assert_eq!(scan.check(full, &LIMITS), Ok(true));
        scan.reset();
        assert_eq!(scan.check(b"PING", &LIMITS), Ok(false));
        assert_eq!(scan.check(b"PING\r\n", &LIMITS), Ok(true));
    }

    #[test]
    fn nested_arrays_are_refused_without_recursing() {
        let mut deep = Vec::new();
        for _ in 0..100_000 {
            deep.extend_from_slice(b"*1\r\n");
        }
        assert!(check(&deep, &LIMITS).is_err());
        assert!(check(b"*1\r\n:1\r\n", &LIMITS).is_err());
    }

    #[test]
    fn inline_commands_split_on_spaces() {
        let mut buf = BytesMut::from(&b"SET  k v\r\nPING\n"[..]);
        assert_eq!(check(&buf, &LIMITS), Ok(true));
        assert_eq!(Reply::err("ERR a\r\n:1"), Reply::Error("ERR a  :1".into()));
        let args = take(&mut buf).unwrap();
        assert_eq!(
            args,
            vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("v")]
        );
        assert_eq!(take(&mut buf).unwrap(), vec![Bytes::from("PING")]);
        assert!(buf.is_empty());
        assert!(check(&vec![b'a'; MAX_INLINE + 1], &LIMITS).is_err());
    }

    #[test]
    fn replies_follow_the_protocol_version() {
        assert_eq!(encoded(Reply::Null, false), "$-1\r\n");
        assert_eq!(encoded(Reply::Null, true), "_\r\n");
        assert_eq!(encoded(Reply::Int(-2), false), ":-2\r\n");
        assert_eq!(encoded(Reply::err("ERR x"), true), "-ERR x\r\n");
        let push = Reply::Push(vec![
            Reply::bulk("invalidate"),
            Reply::Array(vec![Reply::bulk("k")]),
        ]);
        assert_eq!(
            encoded(push, true),
            ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
        );
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(encoded(map.clone(), false), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(map, true), "%1\r\n$1\r\na\r\n:1\r\n");
    }
}
