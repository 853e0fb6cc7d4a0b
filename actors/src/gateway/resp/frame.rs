//! The Redis protocol codec (RESP2 and RESP3) of the client gateway: parses requests, both RESP
//! arrays of bulk strings and inline commands, and encodes [`Reply`] values. Pure: no I/O, no
//! state kept between calls.
//!
//! Limits: requests are accepted only in the two forms clients send (arrays of bulk strings and
//! inline lines), never other RESP types. A command is returned only once all its bytes are
//! buffered (no streaming of large bulks), so [`Limits`] bound what one client can make the node
//! hold. `*0`, `*-1` and blank inline lines parse as empty commands, which callers skip.
//! Parsing is stateless: an incomplete command is scanned again on every call, but only its
//! headers, since bulk payloads are skipped by length. Replies cover the variants of [`Reply`]
//! only (no push, attribute or big-number types; a null array and a null bulk are both
//! [`Reply::Null`]). Doubles get the shortest round-trip digits laid out like Redis's
//! `d2string`; Redis's grisu2 may, rarely, print one more digit.

use std::fmt;
use std::io::Write as _;

/// Limits a parser enforces (protect the node from hostile clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string argument, in bytes.
    pub max_bulk: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command line, in bytes, not counting its line ending.
    pub max_inline: usize,
}

impl Default for Limits {
    /// 512 KiB bulks, 1024 arguments, 64 KiB inline lines.
    fn default() -> Self {
        Limits {
            max_bulk: 512 * 1024,
            max_args: 1024,
            max_inline: 64 * 1024,
        }
    }
}

/// A protocol error: the connection must answer `-ERR Protocol error: …` and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    /// Writes `Protocol error: <reason>`, so the reply is `ERR {error}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// What [`parse_command`] found: a command's arguments and the bytes they took, or None for "need more bytes".
pub type Parsed = Option<(Vec<Vec<u8>>, usize)>;

/// Parses one command from the front of `buf`: Ok(Some((args, consumed))) with every argument's bytes, Ok(None) when more bytes are needed, Err on malformed input or a limit passed.
pub fn parse_command(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    // Invariant: `consumed` >= 1 whenever a command is returned, so a caller looping over the
    // remaining bytes always advances; `args` is empty for `*0`, `*-1` and blank inline lines.
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

fn error(reason: &str) -> ProtocolError {
    ProtocolError(reason.to_owned())
}

/// The longest decimal i64 ("-9223372036854775808").
const MAX_INT_LEN: usize = 20;

/// Reads the `<integer>\r\n` starting at `start`: Ok(None) while incomplete, else the value and
/// the offset after the line.
fn read_int_line(
    buf: &[u8],
    start: usize,
    what: &str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = buf.get(start..).unwrap_or(&[]);
    // Only digits and '-' can precede the '\r' and no i64 is longer than MAX_INT_LEN, so junk or
    // an endless header fails at once instead of being buffered.
    for (i, &b) in rest.iter().enumerate().take(MAX_INT_LEN + 1) {
        match b {
            b'\r' => {
                return match rest.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => match parse_i64(&rest[..i]) {
                        Some(n) => Ok(Some((n, start + i + 2))),
                        None => Err(error(what)),
                    },
                    Some(_) => Err(error(what)),
                };
            }
            b'0'..=b'9' | b'-' if i < MAX_INT_LEN => {}
            _ => return Err(error(what)),
        }
    }
    Ok(None)
}

fn parse_multibulk(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    const BAD_COUNT: &str = "invalid multibulk length";
    const BAD_LEN: &str = "invalid bulk length";
    let Some((count, mut pos)) = read_int_line(buf, 1, BAD_COUNT)? else {
        return Ok(None);
    };
    if count == 0 || count == -1 {
        return Ok(Some((Vec::new(), pos)));
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= limits.max_args)
        .ok_or_else(|| error(BAD_COUNT))?;
    // Grows with the elements actually present, never with the declared count.
    let mut spans = Vec::new();
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&b) => {
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    b.escape_ascii()
                )));
            }
        }
        let Some((len, data)) = read_int_line(buf, pos + 1, BAD_LEN)? else {
            return Ok(None);
        };
        // Checked on the header alone, so an oversized bulk is refused before its bytes arrive.
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= limits.max_bulk)
            .ok_or_else(|| error(BAD_LEN))?;
        let tail = &buf[data..];
        if tail.len() <= len {
            return Ok(None);
        }
        // The terminator is checked byte by byte as it arrives, so a wrong length fails early.
        if tail[len] != b'\r' || tail.get(len + 1).is_some_and(|&b| b != b'\n') {
            return Err(error("expected '\\r\\n' after bulk data"));
        }
        if tail.len() == len + 1 {
            return Ok(None);
        }
        spans.push(data..data + len);
        pos = data + len + 2;
    }
    let args = spans.into_iter().map(|span| buf[span].to_vec()).collect();
    Ok(Some((args, pos)))
}

fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    // Looking no further than max_inline + 1 bytes makes the outcome independent of how the
    // bytes were split: a line is too big exactly when its '\n' lies beyond max_inline.
    let window = &buf[..buf.len().min(limits.max_inline.saturating_add(1))];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() > limits.max_inline {
            Err(error("too big inline request"))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Some((split_args(line, limits.max_args)?, newline + 1)))
}

/// C's `isspace`, which Redis uses between words.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The byte two hex digits spell, as in `\x41`.
fn hex_pair(high: Option<u8>, low: Option<u8>) -> Option<u8> {
    let digit = |b: Option<u8>| char::from(b?).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

/// Splits an inline line into words like Redis's `sdssplitargs`, except that a NUL byte is an
/// ordinary byte here (C strings end at it).
fn split_args(line: &[u8], max_args: usize) -> Result<Vec<Vec<u8>>, ProtocolError> {
    const UNBALANCED: &str = "unbalanced quotes in inline request";
    let at = |i: usize| line.get(i).copied();
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(is_space) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        if args.len() == max_args {
            return Err(error("too many arguments in inline request"));
        }
        let mut word = Vec::new();
        let mut quote = None;
        // A closing quote must end the word: followed by a space or the end of the line.
        let closes = |i: usize| at(i + 1).is_none_or(is_space);
        loop {
            let Some(c) = at(i) else {
                if quote.is_some() {
                    return Err(error(UNBALANCED));
                }
                break;
            };
            match quote {
                Some(b'"') => match (c, at(i + 1), hex_pair(at(i + 2), at(i + 3))) {
                    (b'\\', Some(b'x'), Some(byte)) => {
                        word.push(byte);
                        i += 3;
                    }
                    (b'\\', Some(e), _) => {
                        word.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        i += 1;
                    }
                    (b'"', _, _) if closes(i) => {
                        i += 1;
                        break;
                    }
                    (b'"', _, _) => return Err(error(UNBALANCED)),
                    _ => word.push(c),
                },
                Some(_) => match (c, at(i + 1)) {
                    (b'\\', Some(b'\'')) => {
                        word.push(b'\'');
                        i += 1;
                    }
                    (b'\'', _) if closes(i) => {
                        i += 1;
                        break;
                    }
                    (b'\'', _) => return Err(error(UNBALANCED)),
                    _ => word.push(c),
                },
                None => match c {
                    b' ' | b'\n' | b'\r' | b'\t' => break,
                    b'"' | b'\'' => quote = Some(c),
                    _ => word.push(c),
                },
            }
            i += 1;
        }
        args.push(word);
    }
}

/// Parses a whole argument as an i64 strictly like Redis's `string2ll`: no spaces, no `+`, no leading zeros except "0", fits i64.
pub fn parse_i64(arg: &[u8]) -> Option<i64> {
    let (negative, digits) = match arg.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, arg),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    // Accumulating negatively reaches i64::MIN without overflowing.
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// Whether `arg` equals `name` ignoring ASCII case (command and option names).
pub fn eq_ignore_case(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}

/// A reply value.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A status line such as `OK`.
    Simple(String),
    /// An error line with its full text, prefix included ("ERR …", "WRONGTYPE …").
    Error(String),
    /// A signed integer.
    Integer(i64),
    /// A binary-safe string.
    Bulk(Vec<u8>),
    /// No value.
    Null,
    /// An ordered list of replies.
    Array(Vec<Reply>),
    /// Key/value pairs (a flat array in RESP2).
    Map(Vec<(Reply, Reply)>),
    /// A floating-point number (a bulk string in RESP2).
    Double(f64),
    /// A boolean (the integer 1 or 0 in RESP2).
    Boolean(bool),
    /// Plain text shown as is by clients, sent with the `txt` format (a bulk string in RESP2).
    Verbatim(String),
    /// An unordered collection (an array in RESP2).
    Set(Vec<Reply>),
}

/// Protocol version a connection speaks (HELLO 3 switches to Resp3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, the default for a new connection.
    Resp2,
    /// RESP3.
    Resp3,
}

/// Appends `reply` encoded for `proto` to `out`.
pub fn encode(reply: &Reply, proto: Protocol, out: &mut Vec<u8>) {
    let resp3 = proto == Protocol::Resp3;
    match reply {
        Reply::Simple(text) => put_line(out, b'+', text),
        Reply::Error(text) => put_line(out, b'-', text),
        Reply::Integer(n) => put_header(out, b':', n),
        Reply::Bulk(bytes) => put_bulk(out, bytes),
        Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
        Reply::Null => out.extend_from_slice(b"$-1\r\n"),
        Reply::Array(items) => put_items(out, b'*', items, proto),
        Reply::Set(items) => put_items(out, if resp3 { b'~' } else { b'*' }, items, proto),
        Reply::Map(pairs) => {
            if resp3 {
                put_header(out, b'%', pairs.len());
            } else {
                put_header(out, b'*', pairs.len() * 2);
            }
            for (key, value) in pairs {
                encode(key, proto, out);
                encode(value, proto, out);
            }
        }
        Reply::Double(d) if resp3 => put_line(out, b',', &format_double(*d)),
        Reply::Double(d) => put_bulk(out, format_double(*d).as_bytes()),
        Reply::Boolean(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Reply::Boolean(b) => put_header(out, b':', u8::from(*b)),
        Reply::Verbatim(text) if resp3 => {
            put_header(out, b'=', text.len() + 4);
            out.extend_from_slice(b"txt:");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Reply::Verbatim(text) => put_bulk(out, text.as_bytes()),
    }
}

fn put_header(out: &mut Vec<u8>, tag: u8, n: impl fmt::Display) {
    out.push(tag);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}\r\n");
}

/// A line-framed value: a CR or LF inside would end the frame early, so each becomes a space.
fn put_line(out: &mut Vec<u8>, tag: u8, text: &str) {
    out.push(tag);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

fn put_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    put_header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

fn put_items(out: &mut Vec<u8>, tag: u8, items: &[Reply], proto: Protocol) {
    put_header(out, tag, items.len());
    for item in items {
        encode(item, proto, out);
    }
}

/// Formats a double like Redis's `d2string`: `nan`, `inf`, `-inf`, `-0`, integers in ±2^62 as
/// integers, otherwise the shortest round-trip digits laid out by fpconv's `emit_digits`.
fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "nan".to_owned();
    }
    if d.is_infinite() {
        return if d < 0.0 { "-inf" } else { "inf" }.to_owned();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    let half = (i64::MAX / 2) as f64;
    if (-half..=half).contains(&d) && d.fract() == 0.0 {
        return (d as i64).to_string();
    }
    // `{:e}` gives the shortest round-trip digits as "D.DDDeX"; only the layout is redone.
    let scientific = format!("{:e}", d.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp10: i32 = exponent.parse().unwrap_or(0);
    let ndigits = digits.len() as i32;
    // The value is digits × 10^k.
    let k = exp10 - (ndigits - 1);
    let sign = if d < 0.0 { "-" } else { "" };
    let body = if k >= 0 && exp10.abs() < ndigits + 7 {
        format!("{digits}{}", "0".repeat(k as usize))
    } else if k < 0 && (k > -7 || exp10.abs() < 4) {
        let point = ndigits + k;
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat(-point as usize))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exp10 < 0 { '-' } else { '+' };
        format!("{first}{dot}{rest}e{exp_sign}{}", exp10.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn parse(buf: &[u8]) -> Result<Parsed, ProtocolError> {
        parse_command(buf, &Limits::default())
    }

    fn ok(args: &[&[u8]], consumed: usize) -> Result<Parsed, ProtocolError> {
        Ok(Some((args.iter().map(|a| a.to_vec()).collect(), consumed)))
    }

    fn err(reason: &str) -> Result<Parsed, ProtocolError> {
        Err(ProtocolError(reason.to_owned()))
    }

    fn to_resp(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            put_bulk(&mut out, arg);
        }
        out
    }

    #[test]
    fn parses_resp_array() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        assert_eq!(parse(buf), ok(&[b"GET", b"k"], buf.len()));
        assert_eq!(parse(b"*1\r\n$0\r\n\r\n"), ok(&[b""], 10));
        assert_eq!(parse(b"*1\r\n$4\r\na\r\nb\r\n"), ok(&[b"a\r\nb"], 14));
    }

    #[test]
    fn parses_inline() {
        assert_eq!(parse(b"GET k\r\n"), ok(&[b"GET", b"k"], 7));
        assert_eq!(parse(b"  GET \t k  \n"), ok(&[b"GET", b"k"], 12));
        let line = b"SET \"a b\" \"q\\\"s\\\\n\\n\\r\\t\\x41\\xzz\" 'it\\'s' 'a\\b' \"\"\r\n";
        let want: &[&[u8]] = &[b"SET", b"a b", b"q\"s\\n\n\r\tAxzz", b"it's", b"a\\b", b""];
        assert_eq!(parse(line), ok(want, line.len()));
        assert_eq!(parse(b"a\"b c\"\n"), ok(&[b"ab c"], 7));
        assert_eq!(parse(b"GET k"), Ok(None));
        let unbalanced = err("unbalanced quotes in inline request");
        for bad in [
            "GET \"k\r\n",
            "GET 'k\n",
            "GET \"k\"x\n",
            "GET 'k'x\n",
            "GET \"k\\\"\n",
        ] {
            assert_eq!(parse(bad.as_bytes()), unbalanced, "{bad:?}");
        }
    }

    #[test]
    fn empty_commands_are_returned_empty() {
        assert_eq!(parse(b"*0\r\n"), ok(&[], 4));
        assert_eq!(parse(b"*-1\r\n"), ok(&[], 5));
        assert_eq!(parse(b"\r\n"), ok(&[], 2));
        assert_eq!(parse(b" \t \n"), ok(&[], 4));
    }

    #[test]
    fn pipelined_commands() {
        let buf = b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nECHO x\r\n";
        assert_eq!(parse(buf), ok(&[b"PING"], 14));
        assert_eq!(parse(&buf[14..]), ok(&[b"GET", b"k"], 20));
        assert_eq!(parse(&buf[34..]), ok(&[b"ECHO", b"x"], 8));
        assert_eq!(buf.len(), 42);
    }

    #[test]
    fn incomplete_input_needs_more() {
        for prefix in
            "|*|*1|*1\r|*1\r\n|*1\r\n$|*1\r\n$3\r|*1\r\n$3\r\nGE|*1\r\n$3\r\nGET\r".split('|')
        {
            assert_eq!(parse(prefix.as_bytes()), Ok(None), "{prefix:?}");
        }
    }

    #[test]
    fn limit_errors() {
        let limits = Limits::default();
        assert_eq!(parse(b"*1024\r\n"), Ok(None));
        assert_eq!(parse(b"*1025\r\n"), err("invalid multibulk length"));
        assert_eq!(parse(b"*99999999\r\n"), err("invalid multibulk length"));
        assert_eq!(parse(b"*1\r\n$524288\r\n"), Ok(None));
        assert_eq!(parse(b"*1\r\n$524289\r\n"), err("invalid bulk length"));
        assert_eq!(parse(b"*1\r\n$536870912\r\n"), err("invalid bulk length"));
        let long = vec![b'a'; limits.max_inline + 1];
        assert_eq!(parse(&long[..limits.max_inline]), Ok(None));
        assert_eq!(parse(&long), err("too big inline request"));
        let mut line = long.clone();
        line.push(b'\n');
        assert_eq!(parse(&line), err("too big inline request"));
        let words = "a ".repeat(limits.max_args) + "\n";
        let args = parse(words.as_bytes()).unwrap().unwrap().0;
        assert_eq!(args.len(), limits.max_args);
        let too_many = err("too many arguments in inline request");
        assert_eq!(parse(format!("a {words}").as_bytes()), too_many);
    }

    #[test]
    fn malformed_arrays() {
        let terminator = "expected '\\r\\n' after bulk data";
        assert_eq!(parse(b"*1\r\n$1\r\nkX\r\n"), err(terminator));
        assert_eq!(parse(b"*1\r\n$1\r\nk\rX"), err(terminator));
        assert_eq!(parse(b"*1\r\n$1\r\nkk"), err(terminator));
        assert_eq!(parse(b"*1\r\n$-1\r\n"), err("invalid bulk length"));
        assert_eq!(parse(b"*1\r\n:1\r\n"), err("expected '$', got ':'"));
        assert_eq!(parse(b"*1\r\n\x01"), err("expected '$', got '\\x01'"));
        let bad_counts =
            "*+1\r\n|*01\r\n|* 1\r\n|*-2\r\n|*-0\r\n|*\r\n|*2\n|*1\rX|*123456789012345678901";
        let count_err = err("invalid multibulk length");
        for bad in bad_counts.split('|') {
            assert_eq!(parse(bad.as_bytes()), count_err, "{bad:?}");
        }
        for bad in "*1\r\n$+1\r\n|*1\r\n$01\r\n|*1\r\n$1 \r\n|*1\r\n$1\n".split('|') {
            assert_eq!(parse(bad.as_bytes()), err("invalid bulk length"), "{bad:?}");
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-42"), Some(-42));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in "|-|+1| 1|1 |01|-0|00|1a|9223372036854775808|-9223372036854775809".split('|') {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad:?}");
        }
        assert!(eq_ignore_case(b"gEt", "GET"));
        assert!(!eq_ignore_case(b"GETX", "GET"));
        assert_eq!(ProtocolError("x".into()).to_string(), "Protocol error: x");
    }

    fn encoded(reply: &Reply, proto: Protocol) -> String {
        let mut out = Vec::new();
        encode(reply, proto, &mut out);
        String::from_utf8(out).expect("test replies are UTF-8")
    }

    #[test]
    fn encodes_every_variant() {
        use Protocol::{Resp2, Resp3};
        use Reply::*;
        let nested = Array(vec![Integer(1), Array(vec![Null])]);
        let map = Map(vec![
            (Simple("a".into()), Integer(1)),
            (Bulk(b"b".to_vec()), Boolean(true)),
        ]);
        #[rustfmt::skip]
        let cases = [
            (Simple("OK".into()), "+OK\r\n", "+OK\r\n"),
            (Simple("a\r\nb".into()), "+a  b\r\n", "+a  b\r\n"),
            (Error("ERR bad\nthing".into()), "-ERR bad thing\r\n", "-ERR bad thing\r\n"),
            (Integer(-7), ":-7\r\n", ":-7\r\n"),
            (Bulk(b"hi\r\n".to_vec()), "$4\r\nhi\r\n\r\n", "$4\r\nhi\r\n\r\n"),
            (Bulk(Vec::new()), "$0\r\n\r\n", "$0\r\n\r\n"),
            (Null, "$-1\r\n", "_\r\n"),
            (Array(Vec::new()), "*0\r\n", "*0\r\n"),
            (nested, "*2\r\n:1\r\n*1\r\n$-1\r\n", "*2\r\n:1\r\n*1\r\n_\r\n"),
            (map, "*4\r\n+a\r\n:1\r\n$1\r\nb\r\n:1\r\n", "%2\r\n+a\r\n:1\r\n$1\r\nb\r\n#t\r\n"),
            (Double(1.5), "$3\r\n1.5\r\n", ",1.5\r\n"),
            (Double(f64::INFINITY), "$3\r\ninf\r\n", ",inf\r\n"),
            (Double(f64::NEG_INFINITY), "$4\r\n-inf\r\n", ",-inf\r\n"),
            (Boolean(true), ":1\r\n", "#t\r\n"),
            (Boolean(false), ":0\r\n", "#f\r\n"),
            (Verbatim("hey".into()), "$3\r\nhey\r\n", "=7\r\ntxt:hey\r\n"),
            (Set(vec![Integer(2)]), "*1\r\n:2\r\n", "~1\r\n:2\r\n"),
        ];
        for (reply, resp2, resp3) in cases {
            assert_eq!(encoded(&reply, Resp2), resp2, "{reply:?}");
            assert_eq!(encoded(&reply, Resp3), resp3, "{reply:?}");
        }
    }

    #[test]
    fn formats_doubles_like_redis() {
        #[rustfmt::skip]
        let cases = [
            (3.0, "3"), (-0.0, "-0"), (0.0, "0"), (f64::NAN, "nan"), (0.1, "0.1"), (-2.5, "-2.5"),
            (123456.789, "123456.789"), (0.0001, "0.0001"), (0.00001, "0.00001"), (1e-7, "1e-7"),
            (1.5e-10, "1.5e-10"), (1e15, "1000000000000000"), (1e20, "1e+20"),
            (-1.5e19, "-1.5e+19"), (f64::MAX, "1.7976931348623157e+308"), (5e-324, "5e-324"),
        ];
        for (d, want) in cases {
            assert_eq!(format_double(d), want, "{d:?}");
        }
    }

    fn arg() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..40)
    }

    fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
        vec(arg(), 1..6)
    }

    /// Valid commands with one byte replaced, inserted or removed, to reach deep error paths.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (command(), any::<prop::sample::Index>(), any::<u8>(), 0..3u8).prop_map(
            |(args, at, byte, how)| {
                let mut buf = to_resp(&args);
                let i = at.index(buf.len());
                match how {
                    0 => buf[i] = byte,
                    1 => buf.insert(i, byte),
                    _ => {
                        buf.remove(i);
                    }
                }
                buf
            },
        )
    }

    /// Quotes a word for an inline line so that `split_args` gives it back.
    fn quote(word: &[u8], single: bool) -> Vec<u8> {
        if !word.is_empty() && word.iter().all(u8::is_ascii_alphanumeric) {
            return word.to_vec();
        }
        if single && !word.contains(&b'\\') && !word.contains(&b'\n') {
            let mut out = vec![b'\''];
            for &b in word {
                match b {
                    b'\'' => out.extend_from_slice(b"\\'"),
                    _ => out.push(b),
                }
            }
            out.push(b'\'');
            return out;
        }
        let mut out = vec![b'"'];
        for &b in word {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b' '..=b'~' => out.push(b),
                _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            }
        }
        out.push(b'"');
        out
    }

    proptest! {
        #[test]
        fn split_anywhere_parses_once_complete(args in command()) {
            let buf = to_resp(&args);
            for cut in 0..buf.len() {
                prop_assert_eq!(parse(&buf[..cut]), Ok(None), "cut at {}", cut);
            }
            prop_assert_eq!(parse(&buf), Ok(Some((args, buf.len()))));
        }

        #[test]
        fn pipelined_commands_parse_in_order(commands in vec(command(), 1..5)) {
            let buf: Vec<u8> = commands.iter().flat_map(|c| to_resp(c)).collect();
            let mut rest = &buf[..];
            for want in commands {
                let Ok(Some((args, consumed))) = parse(rest) else {
                    return Err(TestCaseError::fail("command not parsed"));
                };
                prop_assert_eq!(args, want);
                rest = &rest[consumed..];
            }
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            buf in prop_oneof![
                vec(any::<u8>(), 0..200),
                vec(any::<u8>(), 0..200).prop_map(|b| [&b"*"[..], &b[..]].concat()),
                mutated(),
            ],
            tiny in any::<bool>(),
        ) {
            let limits = if tiny { Limits { max_bulk: 8, max_args: 3, max_inline: 16 } } else { Limits::default() };
            if let Ok(Some((args, consumed))) = parse_command(&buf, &limits) {
                prop_assert!(consumed >= 1 && consumed <= buf.len());
                prop_assert!(args.iter().map(Vec::len).sum::<usize>() <= consumed);
                // The result depends on the consumed bytes only.
                prop_assert_eq!(parse_command(&buf[..consumed], &limits), Ok(Some((args, consumed))));
            }
        }

        #[test]
        fn inline_round_trip(
            words in vec((prop_oneof![arg(), "[a-zA-Z0-9]{1,12}".prop_map(String::into_bytes)], any::<bool>()), 1..8),
            crlf in any::<bool>(),
        ) {
            let mut line = Vec::new();
            for (word, single) in &words {
                line.extend_from_slice(&quote(word, *single));
                line.push(b' ');
            }
            line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            let want: Vec<Vec<u8>> = words.into_iter().map(|(w, _)| w).collect();
            prop_assert_eq!(parse(&line), Ok(Some((want, line.len()))));
        }

        #[test]
        fn doubles_round_trip(d in any::<f64>()) {
            let text = format_double(d);
            let back: f64 = text.parse().expect("formatted doubles parse");
            prop_assert!(back == d || (d.is_nan() && back.is_nan()), "{} -> {}", d, text);
            prop_assert_eq!(back.is_sign_negative(), d.is_sign_negative() && !d.is_nan());
        }
    }
}
