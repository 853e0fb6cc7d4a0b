//! The Redis-protocol gateway with real nodes and real Redis tools: redis-cli, redis-benchmark
//! and the redis-py library (RESP2 and RESP3) against a 3-node cluster. Without the tools
//! (`.ci/run` installs redis-tools and python3-redis) a test prints SKIPPED and returns.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::TestCluster;

const RESP: &str = "[resp]\nenabled = true\nport_offset = 1000\n\n[repair]\naae_interval_ms = 0\n";

fn skip(test: &str, why: &str) {
    let line = format!("\n*** SKIPPED {test}: {why} ***\n\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn resp_addr(c: &TestCluster, i: usize) -> SocketAddr {
    let a = c.addrs[i];
    SocketAddr::new(a.ip(), a.port() + 1000)
}

/// Runs `redis-cli -p PORT args…` and answers its stdout, trimmed.
fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Sends raw bytes and reads until `expect` replies' worth of CRLF-terminated lines arrived.
fn raw(addr: SocketAddr, bytes: &[u8], lines: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(2).filter(|w| w == b"\r\n").count() < lines {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_writes_reads_and_deletes_across_nodes_and_refuses_what_it_cannot_do() {
    if !have("redis-cli") {
        return skip(
            "redis_cli_…",
            "redis-cli not installed (apt-get install redis-tools)",
        );
    }
    let c = TestCluster::start_replicated("rc", 3, 3, RESP).await;
    let (a, b) = (resp_addr(&c, 0), resp_addr(&c, 1));
    assert_eq!(cli(a, &["ping"]), "PONG");
    assert_eq!(cli(a, &["set", "greeting", "hello world"]), "OK");
    // Quorum writes and reads: another node's listener sees it at once.
    assert_eq!(cli(b, &["get", "greeting"]), "hello world");
    assert_eq!(cli(b, &["exists", "greeting", "nothing-here"]), "1");
    assert_eq!(
        cli(a, &["mget", "nothing-here", "greeting"]),
        "\nhello world"
    );
    assert_eq!(cli(b, &["del", "greeting", "nothing-here"]), "1");
    assert_eq!(cli(a, &["get", "greeting"]), "");
    assert_eq!(cli(a, &["exists", "greeting"]), "0");
    // The SDK sees what RESP wrote.
    assert_eq!(cli(a, &["set", "shared", "from-resp"]), "OK");
    let client = c.client().await;
    assert_eq!(
        client.get("shared").await.unwrap().values,
        [b"from-resp".to_vec()]
    );

    let incr = cli(a, &["incr", "counter"]);
    assert!(incr.contains("atomic read-modify-write"), "{incr}");
    let nx = cli(a, &["set", "k", "v", "nx"]);
    assert!(nx.contains("atomic read-modify-write"), "{nx}");
    let ex = cli(a, &["set", "k", "v", "ex", "10"]);
    assert!(ex.contains("do not expire"), "{ex}");
    let unknown = cli(a, &["lpush", "list", "x"]);
    assert!(
        unknown.starts_with("ERR unknown command 'lpush'"),
        "{unknown}"
    );
    assert_eq!(cli(a, &["select", "0"]), "OK");
    assert!(cli(a, &["info"]).contains("redis_version:"));
    let cfg = cli(a, &["config", "get", "save"]);
    assert_eq!(cfg, "save");

    // RINGKV.* carry siblings, contexts and per-request levels.
    let ctx = cli(a, &["ringkv.put", "doc", "v1", "w", "all"]);
    assert!(
        !ctx.is_empty() && ctx.chars().all(|ch| ch.is_ascii_hexdigit()),
        "{ctx}"
    );
    let read = cli(b, &["ringkv.get", "doc", "r", "all"]);
    assert!(read.starts_with("v1\n"), "{read}");
    let bad = cli(a, &["ringkv.put", "doc", "v2", "context", "zz"]);
    assert!(bad.contains("CONTEXT must be the hex"), "{bad}");
    let bad = cli(a, &["ringkv.get", "doc", "r", "most"]);
    assert!(bad.contains("consistency must be"), "{bad}");

    // Pipelining and inline commands over one raw connection.
    let got = raw(
        a,
        b"*3\r\n$3\r\nSET\r\n$1\r\np\r\n$2\r\nv1\r\n*2\r\n$3\r\nGET\r\n$1\r\np\r\nPING\r\nECHO \"two words\"\r\n",
        5,
    );
    assert_eq!(got, "+OK\r\n$2\r\nv1\r\n+PONG\r\n$9\r\ntwo words\r\n");
    // Garbage gets a protocol error, and the node goes on serving.
    let got = raw(a, b"*1\r\n:12\r\n", 1);
    assert!(got.starts_with("-ERR Protocol error"), "{got}");
    assert_eq!(cli(a, &["get", "p"]), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_speaks_resp2_and_resp3_and_redis_benchmark_runs_unmodified() {
    let py = Command::new("python3")
        .args([
            "-c",
            "import redis, sys; sys.exit(int(redis.__version__.split('.')[0]) < 5)",
        ])
        .output();
    if !py.is_ok_and(|o| o.status.success()) {
        return skip(
            "redis_py_…",
            "redis-py 5 or later is not installed (python3 -m pip install 'redis>=5')",
        );
    }
    let c = TestCluster::start_replicated("rp", 3, 3, RESP).await;
    let a = resp_addr(&c, 0);
    let script = format!(
        r#"
import redis
for proto in (2, 3):
    r = redis.Redis(host="{ip}", port={port}, protocol=proto)
    assert r.ping()
    assert r.set(f"py{{proto}}", b"\x00binary\xff") is True
    assert r.get(f"py{{proto}}") == b"\x00binary\xff", r.get(f"py{{proto}}")
    assert r.exists(f"py{{proto}}") == 1
    assert r.delete(f"py{{proto}}") == 1
    assert r.get(f"py{{proto}}") is None
    with r.pipeline(transaction=False) as p:
        for i in range(50):
            p.set(f"pipe{{i}}", str(i))
        p.get("pipe49")
        out = p.execute()
    assert out[-1] == b"49", out[-1]
    try:
        r.incr("n")
        raise SystemExit("INCR was accepted")
    except redis.ResponseError as e:
        assert "atomic" in str(e), e
    print("proto", proto, "ok", r.connection_pool.connection_kwargs.get("protocol"))
"#,
        ip = a.ip(),
        port = a.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("proto 2 ok") && text.contains("proto 3 ok"),
        "{text}"
    );

    if !have("redis-benchmark") {
        return skip(
            "redis_benchmark",
            "redis-benchmark not installed (apt-get install redis-tools)",
        );
    }
    let out = Command::new("redis-benchmark")
        .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
        .args([
            "-t", "get,set", "-n", "2000", "-r", "1000", "-d", "100", "-c", "8", "-q",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in ["SET:", "GET:"] {
        assert!(
            text.contains(t) && text.contains("requests per second"),
            "{text}"
        );
    }
    eprintln!("redis-benchmark through ringkv (debug build): {text}");
}
