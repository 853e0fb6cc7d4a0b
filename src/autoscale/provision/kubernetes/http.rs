//! The smallest HTTP/1.1 client the Kubernetes API needs: one request per connection
//! (`Connection: close`), plain TCP only, bodies framed by `Content-Length`, by
//! `Transfer-Encoding: chunked` (kubectl proxy streams API replies chunked) or by the close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reply larger than this is refused rather than buffered: API objects this provisioner
/// reads are a few KB, so anything near it is a misdirected URL.
const MAX_RESPONSE: usize = 16 << 20;

/// Where the API server (or the kubectl proxy in front of it) listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// Host to connect to (a name, an IPv4 address or a bracket-free IPv6 address).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `host:port` as written in the URL, sent as the `Host` header.
    pub authority: String,
    /// Path the URL carried, without a trailing '/', prefixed to every request path.
    pub prefix: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/prefix]`; `https://` is refused because TLS is not built in.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let url = url.trim();
        if url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://") {
            return Err(format!(
                "api_url {url}: TLS to the Kubernetes API server is not built in yet; run \
                 `kubectl proxy --port=8001` as a sidecar container (it authenticates with the \
                 pod's service account) and set api_url = \"http://127.0.0.1:8001\""
            ));
        }
        let rest = match url.get(..7) {
            Some(s) if s.eq_ignore_ascii_case("http://") => &url[7..],
            _ => {
                return Err(format!(
                    "api_url {url:?}: not a URL of the form http://HOST:PORT"
                ));
            }
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let bad = |why: &str| format!("api_url {url:?}: {why} (expected http://HOST:PORT)");
        if authority.contains('@') || rest.contains(['?', '#']) {
            return Err(bad("user info, query and fragment are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err()
                || !(after.is_empty() || after.starts_with(':'))
            {
                return Err(bad("bad IPv6 address"));
            }
            (host, after.strip_prefix(':'))
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if host.is_empty() || host.contains([':', ' ', '[', ']']) {
                return Err(bad("no valid host"));
            }
            (host, port)
        };
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// A complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Body, with any chunked framing removed.
    pub body: Vec<u8>,
}

/// Sends one request and reads its reply, all within `timeout`. `body` is (content type, bytes).
pub(super) async fn send(
    ep: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<Response, String> {
    let exchange = async {
        let mut stream = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", ep.host, ep.port))?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringkv\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            ep.prefix, ep.authority
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some((ctype, bytes)) = body {
            head.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.map_or(&[][..], |(_, b)| b));
        stream
            .write_all(&out)
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read failed: {e}"))?;
            buf.extend_from_slice(&chunk[..n]);
            if let Some(resp) = parse_response(&buf, n == 0)? {
                return Ok(resp);
            }
            if n == 0 {
                return Err("connection closed before the reply was complete".to_string());
            }
            if buf.len() > MAX_RESPONSE {
                return Err(format!("reply larger than {MAX_RESPONSE} bytes"));
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no complete reply within {} ms",
            timeout.as_millis()
        )),
    }
}

/// The reply in `buf` once it is complete (`eof`: the server closed, which ends an unframed
/// body), `None` while more bytes are needed.
pub(super) fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(head_len) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| "reply head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let (true, Some(status)) = (version.starts_with("HTTP/1."), status) else {
        return Err(format!("not an HTTP/1.x reply: {status_line:?}"));
    };
    let reason = parts.next().unwrap_or_default().to_string();
    let rest = &buf[head_len + 4..];
    if (100..200).contains(&status) {
        // An interim reply (100 Continue) precedes the real one on the same connection.
        return parse_response(rest, eof);
    }
    let (mut chunked, mut length) = (false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let body = if status == 204 || status == 304 {
        Some(Vec::new())
    } else if chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
        dechunk(rest)?
    } else if let Some(n) = length {
        (rest.len() >= n).then(|| rest[..n].to_vec())
    } else {
        eof.then(|| rest.to_vec())
    };
    Ok(body.map(|body| Response {
        status,
        reason,
        body,
    }))
}

/// The body a complete chunked encoding in `data` carries, `None` while it is incomplete.
fn dechunk(data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_len) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&data[pos..pos + line_len]);
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        pos += line_len + 2;
        if size == 0 {
            // Optional trailer fields, then the empty line that ends the message.
            let trailers = &data[pos..];
            let done = trailers.starts_with(b"\r\n") || find(trailers, b"\r\n\r\n").is_some();
            return Ok(done.then_some(body));
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        if &data[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_string());
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size + 2;
        if body.len() > MAX_RESPONSE {
            return Err(format!("reply larger than {MAX_RESPONSE} bytes"));
        }
    }
}

/// Where `needle` first starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_and_prefix_and_https_is_refused() {
        let ep = Endpoint::parse("http://127.0.0.1:8001").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.prefix.as_str()),
            ("127.0.0.1", 8001, "")
        );
        let ep = Endpoint::parse("HTTP://[::1]:9/k8s/").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.authority.as_str()),
            ("::1", 9, "[::1]:9")
        );
        assert_eq!(ep.prefix, "/k8s");
        assert_eq!(Endpoint::parse("http://proxy").unwrap().port, 80);
        let tls = Endpoint::parse("https://kubernetes.default.svc").unwrap_err();
        assert!(
            tls.contains("TLS") && tls.contains("kubectl proxy"),
            "{tls}"
        );
        assert!(tls.contains("http://127.0.0.1:8001"), "{tls}");
        for bad in [
            "127.0.0.1:8001",
            "http://",
            "http://h:0",
            "http://h:x",
            "ftp://h",
            "http://h?q",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn chunked_bodies_are_joined_whatever_the_split() {
        let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
            4;ext=1\r\n{\"a\"\r\nb\r\n:[1,2,3,4]}\r\n0\r\nX-Trailer: t\r\n\r\n";
        let want = b"{\"a\":[1,2,3,4]}".to_vec();
        for cut in 0..reply.len() {
            assert_eq!(
                parse_response(&reply[..cut], false).unwrap(),
                None,
                "complete at {cut}"
            );
        }
        let resp = parse_response(reply, false).unwrap().unwrap();
        assert_eq!(
            (resp.status, resp.reason.as_str(), resp.body),
            (200, "OK", want)
        );
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad, false).is_err());
    }

    #[test]
    fn length_framed_unframed_and_interim_replies() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}extra";
        let resp = parse_response(r, false).unwrap().unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (404, &b"{}"[..]));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc";
        assert_eq!(parse_response(short, false).unwrap(), None);
        let unframed = b"HTTP/1.0 200 OK\r\n\r\nabc";
        assert_eq!(parse_response(unframed, false).unwrap(), None);
        assert_eq!(
            parse_response(unframed, true).unwrap().unwrap().body,
            b"abc"
        );
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
    }
}
