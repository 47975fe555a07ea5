//! A lean RESP2 connection for the Redis Streams source's reads.
//!
//! An `XREADGROUP` reply carries up to `batch` entries of three strings each. The `redis`
//! crate turns it into a generic value tree through a general-purpose parser combinator, which
//! took about 40% of a source thread's CPU in `weir bench-io`. On plain TCP endpoints the
//! source reads through this connection instead: it writes the command, buffers the whole
//! reply (a header scan that skips over payloads, resumed as bytes arrive), then walks the
//! buffer with [`Cursor`]. Everything else (group creation, acknowledgements, trims, claims)
//! stays on the `redis` crate's connection, and TLS or Unix-socket endpoints read there too.
//!
//! Errors are `redis` crate errors with the same classification: I/O failures and timeouts
//! (retryable), server error replies with their code (`NOGROUP`, `LOADING`, …), and a refused
//! login as [`redis::ErrorKind::AuthenticationFailed`].

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult};

/// Bytes read per `read` call at least (the buffer grows to hold the largest reply).
const READ_CHUNK: usize = 64 * 1024;

/// A RESP2 connection: one request at a time, replies read whole into a reusable buffer.
pub(crate) struct RawConnection {
    stream: TcpStream,
    /// The current reply: `buf[..filled]` was read, `buf[..reply_end]` is the complete reply.
    buf: Vec<u8>,
    filled: usize,
    /// Scratch for encoding commands.
    out: Vec<u8>,
}

impl RawConnection {
    /// Connects to a plain TCP endpoint and logs in (`AUTH`, then `SELECT` a non-zero
    /// database); `Ok(None)` for TLS and Unix-socket endpoints, which this connection does not
    /// speak. Connecting, reading and writing time out after `timeout`.
    pub(crate) fn open(
        info: &ConnectionInfo,
        timeout: Duration,
    ) -> RedisResult<Option<RawConnection>> {
        let ConnectionAddr::Tcp(host, port) = &info.addr else {
            return Ok(None);
        };
        let mut last_error = None;
        let mut stream = None;
        for addr in (host.as_str(), *port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let stream = match stream {
            Some(s) => s,
            None => {
                return Err(last_error
                    .unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "the host has no address")
                    })
                    .into())
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut conn = RawConnection {
            stream,
            buf: Vec::new(),
            filled: 0,
            out: Vec::new(),
        };
        if let Some(password) = &info.redis.password {
            let password = password.as_bytes();
            let mut reply = match &info.redis.username {
                Some(user) => conn.simple(&[b"AUTH", user.as_bytes(), password]),
                None => conn.simple(&[b"AUTH", password]),
            };
            // Servers before Redis 6 know no user names (the `redis` crate retries the same way).
            if let Err(e) = &reply {
                if info.redis.username.is_some()
                    && e.detail()
                        .is_some_and(|d| d.contains("wrong number of arguments for 'auth'"))
                {
                    reply = conn.simple(&[b"AUTH", password]);
                }
            }
            match reply {
                Ok(()) => {}
                Err(e) if e.is_io_error() => return Err(e),
                Err(_) => {
                    return Err(RedisError::from((
                        ErrorKind::AuthenticationFailed,
                        "Password authentication failed",
                    )))
                }
            }
        }
        if info.redis.db != 0 {
            conn.simple(&[b"SELECT", info.redis.db.to_string().as_bytes()])?;
        }
        Ok(Some(conn))
    }

    /// Sends a command whose reply is a status, integer or bulk string; fails on an error reply.
    fn simple(&mut self, args: &[&[u8]]) -> RedisResult<()> {
        let mut reply = self.request(args)?;
        match reply.next()? {
            Item::Error(line) => Err(server_error(line)),
            _ => Ok(()),
        }
    }

    /// Sends `args` as one command and reads its whole reply; the cursor walks it. An error
    /// reply comes back as [`Item::Error`] (see [`server_error`]).
    pub(crate) fn request(&mut self, args: &[&[u8]]) -> RedisResult<Cursor<'_>> {
        self.out.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(self.out, "*{}\r\n", args.len());
        for arg in args {
            let _ = write!(self.out, "${}\r\n", arg.len());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.out)?;
        self.filled = 0;
        let mut scan = Scanner::default();
        let end = loop {
            if let Some(end) = scan.advance(&self.buf[..self.filled]).map_err(protocol)? {
                break end;
            }
            if self.buf.len() - self.filled < READ_CHUNK {
                self.buf
                    .resize(self.filled + READ_CHUNK.max(self.filled), 0);
            }
            let n = self.stream.read(&mut self.buf[self.filled..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "Redis closed the connection",
                )
                .into());
            }
            self.filled += n;
        };
        if end != self.filled {
            // Only one request is ever in flight: more bytes mean the stream is out of step.
            return Err(protocol("bytes after the reply".into()));
        }
        Ok(Cursor {
            buf: &self.buf[..end],
            pos: 0,
        })
    }
}

fn protocol(message: String) -> RedisError {
    RedisError::from((ErrorKind::ParseError, "invalid reply from Redis", message))
}

/// The `redis` crate's error for an error reply line (`NOGROUP …`, `LOADING …`), so codes
/// and retry classification match its own connection's.
pub(crate) fn server_error(line: &[u8]) -> RedisError {
    let mut framed = Vec::with_capacity(line.len() + 3);
    framed.push(b'-');
    framed.extend_from_slice(line);
    framed.extend_from_slice(b"\r\n");
    match redis::parse_redis_value(&framed).and_then(|v| v.extract_error()) {
        Err(e) => e,
        Ok(_) => RedisError::from((
            ErrorKind::ResponseError,
            "error reply",
            String::from_utf8_lossy(line).into_owned(),
        )),
    }
}

/// Finds where one complete RESP2 value ends; resumes where the previous call stopped, so
/// a reply arriving in many reads is scanned once. Bulk string contents are skipped by length.
#[derive(Debug, Default)]
struct Scanner {
    /// Where the next value (or element) starts.
    pos: usize,
    /// Elements still expected by each array being scanned, innermost last.
    open: Vec<usize>,
    /// A value was started (so an empty `open` means the reply is complete).
    started: bool,
}

impl Scanner {
    /// `Some(end)` once `buf` holds the whole value, `None` while more bytes are needed.
    fn advance(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        loop {
            if self.started && self.open.is_empty() {
                return Ok(Some(self.pos));
            }
            let Some(line_end) = find_crlf(buf, self.pos) else {
                return Ok(None);
            };
            let header = &buf[self.pos + 1..line_end];
            let next = line_end + 2;
            match buf[self.pos] {
                b'+' | b'-' | b':' => {
                    self.pos = next;
                    self.finish_one();
                }
                b'$' => {
                    let len = parse_int(header)?;
                    if len < 0 {
                        self.pos = next;
                    } else {
                        let end = next + len as usize + 2;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        self.pos = end;
                    }
                    self.finish_one();
                }
                b'*' => {
                    let len = parse_int(header)?;
                    self.pos = next;
                    if len <= 0 {
                        self.finish_one();
                    } else {
                        self.started = true;
                        self.open.push(len as usize);
                    }
                }
                other => return Err(format!("unexpected reply type byte {other:#04x}")),
            }
        }
    }

    /// One value ended: it counts as an element of the innermost open array, which may end
    /// in turn.
    fn finish_one(&mut self) {
        self.started = true;
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                break;
            }
            self.open.pop();
        }
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let i = at + memchr(b'\r', buf.get(at..)?)?;
        if buf.get(i + 1) == Some(&b'\n') {
            return Some(i);
        }
        at = i + 1;
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

fn parse_int(digits: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("invalid length `{}`", String::from_utf8_lossy(digits)))
}

/// One RESP2 value header, borrowing from the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    /// `*n` (`None`: the null array `*-1`); its `n` elements follow.
    Array(Option<usize>),
    /// `$n` and its bytes (`None`: the null bulk string `$-1`).
    Bulk(Option<&'a [u8]>),
    /// `+…`.
    Status(&'a [u8]),
    /// `-…`: an error reply.
    Error(&'a [u8]),
    /// `:n`.
    Int(i64),
}

/// Walks a complete reply value by value (depth first).
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor over a complete reply (tests).
    #[cfg(test)]
    pub(crate) fn over(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// The next value header; fails at the end of the reply or on malformed bytes (the
    /// [`Scanner`] checked the framing, so that means a reply of another shape than expected).
    pub(crate) fn next(&mut self) -> RedisResult<Item<'a>> {
        let buf = self.buf;
        let line_end =
            find_crlf(buf, self.pos).ok_or_else(|| protocol("the reply ended early".into()))?;
        let kind = buf[self.pos];
        let header = &buf[self.pos + 1..line_end];
        self.pos = line_end + 2;
        Ok(match kind {
            b'+' => Item::Status(header),
            b'-' => Item::Error(header),
            b':' => Item::Int(parse_int(header).map_err(protocol)?),
            b'$' => {
                let len = parse_int(header).map_err(protocol)?;
                if len < 0 {
                    Item::Bulk(None)
                } else {
                    let start = self.pos;
                    let end = start + len as usize;
                    let bytes = buf
                        .get(start..end)
                        .ok_or_else(|| protocol("a bulk string ended early".into()))?;
                    self.pos = end + 2;
                    Item::Bulk(Some(bytes))
                }
            }
            b'*' => {
                let len = parse_int(header).map_err(protocol)?;
                Item::Array(usize::try_from(len).ok())
            }
            other => return Err(protocol(format!("unexpected reply type byte {other:#04x}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: &[u8] = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$7\r\npayload\r\n$8\r\n{\"a\":\r\n}\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n";

    #[test]
    fn the_scanner_finds_the_end_whatever_the_reads() {
        for split in 0..REPLY.len() {
            let mut scan = Scanner::default();
            assert_eq!(scan.advance(&REPLY[..split]).unwrap(), None, "{split}");
            assert_eq!(scan.advance(REPLY).unwrap(), Some(REPLY.len()), "{split}");
        }
        for (whole, len) in [
            (&b"+OK\r\n"[..], 5),
            (b"-NOGROUP no such key\r\n", 22),
            (b":12\r\n", 5),
            (b"$-1\r\n", 5),
            (b"*-1\r\n", 5),
            (b"*0\r\n", 4),
            (b"$0\r\n\r\n", 6),
        ] {
            assert_eq!(Scanner::default().advance(whole).unwrap(), Some(len));
        }
        assert!(Scanner::default().advance(b"?x\r\n").is_err());
        assert!(Scanner::default().advance(b"$zz\r\n").is_err());
    }

    #[test]
    fn the_cursor_walks_values_depth_first() {
        let mut c = Cursor { buf: REPLY, pos: 0 };
        let mut items = Vec::new();
        while c.pos < REPLY.len() {
            items.push(c.next().unwrap());
        }
        assert_eq!(
            items,
            vec![
                Item::Array(Some(1)),
                Item::Array(Some(2)),
                Item::Bulk(Some(b"s")),
                Item::Array(Some(2)),
                Item::Array(Some(2)),
                Item::Bulk(Some(b"1-0")),
                Item::Array(Some(2)),
                Item::Bulk(Some(b"payload")),
                Item::Bulk(Some(b"{\"a\":\r\n}")),
                Item::Array(Some(2)),
                Item::Bulk(Some(b"2-0")),
                Item::Array(None),
            ]
        );
        assert!(c.next().is_err());
    }

    #[test]
    fn error_lines_keep_their_codes() {
        let e = server_error(b"NOGROUP No such key 's' or consumer group 'g'");
        assert_eq!(e.code(), Some("NOGROUP"));
        let e = server_error(b"LOADING Redis is loading the dataset in memory");
        assert_eq!(e.code(), Some("LOADING"));
    }
}
