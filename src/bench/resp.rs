//! A minimal Redis-protocol client for `ringkv bench --target resp://HOST:PORT`: one
//! connection per worker, one command in flight on it, as `redis-benchmark -P 1` runs, so the
//! same workload can drive a ringkv node's RESP port or a redis-server.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Parses `resp://HOST:PORT` (HOST an IP address or `localhost`).
pub fn parse_target(t: &str) -> Result<SocketAddr, String> {
    let rest = t
        .strip_prefix("resp://")
        .ok_or_else(|| format!("--target '{t}': use resp://HOST:PORT"))?;
    let rest = rest.trim_end_matches('/');
    let rest = rest.replacen("localhost", "127.0.0.1", 1);
    rest.parse().map_err(|_| {
        format!("--target '{t}': HOST:PORT must be ip:port, e.g. resp://127.0.0.1:6379")
    })
}

/// One connection.
pub struct Conn {
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        Ok(Conn {
            stream: BufReader::new(s),
            out: Vec::with_capacity(256),
            line: Vec::with_capacity(64),
        })
    }

    /// Sends one command and reads its reply; `Ok` unless the reply is an error or the
    /// connection failed. Reply payloads are read and dropped.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<(), String> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.stream
            .get_mut()
            .write_all(&self.out)
            .await
            .map_err(|e| e.to_string())?;
        self.reply().await
    }

    async fn read_line(&mut self) -> Result<(), String> {
        self.line.clear();
        let n = self
            .stream
            .read_until(b'\n', &mut self.line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        Ok(())
    }

    fn number(&self) -> Result<i64, String> {
        std::str::from_utf8(&self.line[1..])
            .ok()
            .map(str::trim)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad reply header {:?}", String::from_utf8_lossy(&self.line)))
    }

    /// Reads one reply (arrays and maps element by element).
    async fn reply(&mut self) -> Result<(), String> {
        let mut pending = 1i64;
        let mut error = None;
        while pending > 0 {
            pending -= 1;
            self.read_line().await?;
            match self.line.first() {
                Some(b'-') | Some(b'!') if error.is_none() => {
                    error = Some(String::from_utf8_lossy(&self.line[1..]).trim().to_string());
                }
                Some(b'$') | Some(b'=') | Some(b'!') => {
                    let len = self.number()?;
                    if len >= 0 {
                        let mut skip = vec![0u8; len as usize + 2];
                        self.stream
                            .read_exact(&mut skip)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                Some(b'*') | Some(b'~') | Some(b'>') => pending += self.number()?.max(0),
                Some(b'%') => pending += 2 * self.number()?.max(0),
                Some(_) => {}
                None => return Err("empty reply".into()),
            }
        }
        error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_the_form() {
        assert_eq!(
            parse_target("resp://127.0.0.1:6379").unwrap(),
            "127.0.0.1:6379".parse().unwrap()
        );
        assert_eq!(
            parse_target("resp://localhost:8401/").unwrap(),
            "127.0.0.1:8401".parse().unwrap()
        );
        assert!(parse_target("redis://x:1").unwrap_err().contains("resp://"));
        assert!(parse_target("resp://db:1").unwrap_err().contains("ip:port"));
    }
}
