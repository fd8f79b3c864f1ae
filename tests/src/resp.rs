//! A raw RESP connection for the tests: commands sent as arrays of bulk
//! strings, each reply returned as its exact bytes (so replies of two
//! servers can be compared byte for byte).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a test waits for one reply.
const REPLY_DEADLINE: Duration = Duration::from_secs(10);

pub struct RespConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Replies in RESP3 (after `HELLO 3`).
    pub resp3: bool,
}

/// A command as RESP: an array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl RespConn {
    pub async fn connect(addr: SocketAddr) -> RespConn {
        let stream = TcpStream::connect(addr).await.expect("connect to RESP");
        stream.set_nodelay(true).expect("nodelay");
        RespConn {
            stream,
            buf: BytesMut::new(),
            resp3: false,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    pub async fn send(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send_raw(&encode(&args)).await;
    }

    /// The next reply's bytes, or None if the server closed the connection.
    pub async fn reply(&mut self) -> Option<String> {
        let read = async {
            loop {
                // A RESP3 type byte (HELLO 3's own reply comes before the
                // caller knows the connection switched).
                let resp3_only = self.buf.first().is_some_and(|b| b"%_>~,#(=|".contains(b));
                let complete = if self.resp3 || resp3_only {
                    redis_protocol::resp3::decode::complete::decode(&self.buf)
                        .map(|r| r.map(|(_, n)| n))
                } else {
                    redis_protocol::resp2::decode::decode(&self.buf).map(|r| r.map(|(_, n)| n))
                };
                match complete {
                    Ok(Some(n)) => {
                        let bytes = self.buf.split_to(n);
                        return Some(String::from_utf8_lossy(&bytes).into_owned());
                    }
                    Ok(None) => {}
                    Err(e) => panic!("unreadable reply {:?}: {e:?}", self.buf),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(REPLY_DEADLINE, read)
            .await
            .expect("a reply within the deadline")
    }

    /// Bytes received after the replies returned so far.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Sends `args` and returns the reply.
    pub async fn call(&mut self, args: &[&str]) -> String {
        self.send(args).await;
        self.reply()
            .await
            .unwrap_or_else(|| panic!("connection closed instead of answering {:?}", args.first()))
    }
}
