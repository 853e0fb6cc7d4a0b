//! One real node process: the SDK and the CLI end to end, limits, contexts, malformed frames.

mod common;

use std::time::Duration;

use common::TestCluster;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use ringkv::{KvError, RequestOptions};
use ringkv_actors::protocol::{KvError as WireError, PutReply, Wire, router_group};
use serde::{Deserialize, Serialize};

#[tokio::test(flavor = "multi_thread")]
async fn sdk_put_get_delete() {
    let c = TestCluster::start("sdk", 1, "").await;
    let client = c.client().await;
    assert!(!client.get("missing").await.unwrap().found());
    for i in 0..200u32 {
        client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    for i in 0..200u32 {
        let r = client.get(format!("k{i}")).await.unwrap();
        assert_eq!(r.value(), Some(format!("v{i}").as_bytes()));
    }
    client.put("k1", "changed").await.unwrap();
    assert_eq!(
        client.get("k1").await.unwrap().values,
        vec![b"changed".to_vec()]
    );
    client.delete("k1").await.unwrap();
    assert!(!client.get("k1").await.unwrap().found());
    // Binary keys and values are bytes, not strings.
    client.put([0u8, 255, 1], [9u8, 0, 200]).await.unwrap();
    assert_eq!(
        client.get([0u8, 255, 1]).await.unwrap().value(),
        Some(&[9u8, 0, 200][..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn contexts_supersede_exactly_what_they_saw() {
    let c = TestCluster::start("ctx", 1, "").await;
    let client = c.client().await;
    client.put("doc", "v0").await.unwrap();
    let seen = client.get("doc").await.unwrap().context;
    // Two writers both start from what they read: neither saw the other.
    client
        .put_with("doc", "a", &RequestOptions::with_context(seen.clone()))
        .await
        .unwrap();
    client
        .put_with("doc", "b", &RequestOptions::with_context(seen))
        .await
        .unwrap();
    let r = client.get("doc").await.unwrap();
    let mut vals = r.values.clone();
    vals.sort();
    assert_eq!(
        vals,
        vec![b"a".to_vec(), b"b".to_vec()],
        "concurrent writes are siblings"
    );
    // A write with the context of the read that returned both resolves them.
    client
        .put_with("doc", "merged", &RequestOptions::with_context(r.context))
        .await
        .unwrap();
    assert_eq!(
        client.get("doc").await.unwrap().values,
        vec![b"merged".to_vec()]
    );
    // A sequential writer that passes the context of its last write never sees siblings.
    let mut ctx = client.get("doc").await.unwrap().context;
    for i in 0..20 {
        ctx = client
            .put_with("doc", format!("s{i}"), &RequestOptions::with_context(ctx))
            .await
            .unwrap();
        assert_eq!(client.get("doc").await.unwrap().values.len(), 1);
    }
    // A writer continuing from its own write's context never removes a concurrent write it
    // did not see.
    let base = client.get("doc").await.unwrap().context;
    client
        .put_with("doc", "theirs", &RequestOptions::with_context(base.clone()))
        .await
        .unwrap();
    let mine = client
        .put_with("doc", "mine", &RequestOptions::with_context(base))
        .await
        .unwrap();
    client
        .put_with("doc", "mine-2", &RequestOptions::with_context(mine))
        .await
        .unwrap();
    let mut vals = client.get("doc").await.unwrap().values;
    vals.sort();
    assert_eq!(vals, vec![b"mine-2".to_vec(), b"theirs".to_vec()]);

    let bad = ringkv::Context::from_base64("AAAA").unwrap();
    let err = client
        .put_with("doc", "x", &RequestOptions::with_context(bad))
        .await
        .unwrap_err();
    assert!(matches!(err, KvError::BadContext(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_reject_before_storing() {
    let c = TestCluster::start("lim", 1, "").await;
    let client = c.client().await;
    assert_eq!(client.put("", "v").await.unwrap_err(), KvError::EmptyKey);
    let long_key = vec![b'k'; 1025];
    assert_eq!(
        client.put(&long_key, "v").await.unwrap_err(),
        KvError::KeyTooLarge {
            size: 1025,
            limit: 1024
        }
    );
    let big = vec![b'x'; 10240];
    assert_eq!(
        client.put("big", &big).await.unwrap_err(),
        KvError::PairTooLarge {
            size: 10243,
            limit: 10240
        }
    );
    assert!(!client.get("big").await.unwrap().found(), "nothing stored");
    // Just under the limit is accepted.
    let fits = vec![b'x'; 10236];
    client.put("big", &fits).await.unwrap();
    assert_eq!(
        client.get("big").await.unwrap().value().map(<[u8]>::len),
        Some(10236)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_put_get_delete_and_exit_codes() {
    let c = TestCluster::start("cli", 1, "").await;
    let out = c.cli(&["put", "greeting", "hello"]);
    common::assert_success(&out);
    let out = c.cli(&["get", "greeting"]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"hello\n"[..])
    );
    let out = c.cli(&["get", "--json", "greeting"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["values"], serde_json::json!(["hello"]));
    assert_eq!(v["found"], serde_json::json!(true));
    let ctx = v["context"].as_str().unwrap().to_string();
    let out = c.cli(&["put", "--context", &ctx, "--json", "greeting", "hi"]);
    assert_eq!(out.status.code(), Some(0));
    let out = c.cli(&["get", "nothing-here"]);
    assert_eq!(out.status.code(), Some(1));
    let out = c.cli(&["delete", "greeting"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(c.cli(&["get", "greeting"]).status.code(), Some(1));

    let big = "a".repeat(11020);
    let out = c.cli(&["put", "kk", &big]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: pair too large: 11022 bytes, limit 10240"
    );
    assert_eq!(
        c.cli(&["get", "kk"]).status.code(),
        Some(1),
        "nothing stored"
    );
    let out = c.cli(&["put", "", "v"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty key"));
    let out = c.cli(&["put", "--context", "!!", "k", "v"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad context"));
}

#[test]
fn cli_reports_unreachable_cluster() {
    let c = TestCluster::configure("down", 1, "");
    // Nothing is running on the configured port.
    let cfg = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(
        &c.config,
        cfg.replace("connect_timeout_ms = 10000", "connect_timeout_ms = 500"),
    )
    .unwrap();
    let out = c.cli(&["get", "k"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: not connected: no member reachable"),
        "{err}"
    );
}

/// A payload shaped nothing like a `PutRequest`.
#[derive(Serialize, Deserialize)]
struct Garbage {
    nonsense: Vec<u64>,
}

/// Same variant name as the router's `Put`, so ractor_cluster routes it there by name.
#[derive(RactorClusterMessage)]
enum FakeRouterMessage {
    #[rpc]
    Put(
        Wire<Garbage>,
        RpcReplyPort<Wire<Result<PutReply, WireError>>>,
    ),
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_are_answered_and_harm_nothing() {
    let c = TestCluster::start("bad", 1, "").await;
    let client = c.client().await;
    client.put("before", "ok").await.unwrap();
    let cell = ractor::pg::get_members(&router_group(&c.ids[0]))[0].clone();
    let fake: ActorRef<FakeRouterMessage> = cell.into();
    for _ in 0..20 {
        let reply = fake
            .call(
                |port| {
                    FakeRouterMessage::Put(
                        Wire::new(Garbage {
                            nonsense: vec![1, 2, 3],
                        }),
                        port,
                    )
                },
                Some(Duration::from_secs(5)),
            )
            .await
            .expect("sent");
        match reply {
            CallResult::Success(Wire(Ok(Err(WireError::BadRequest(m))))) => {
                assert!(m.contains("malformed put request"), "{m}")
            }
            other => panic!(
                "expected a BadRequest reply, got {:?}",
                matches!(other, CallResult::Success(_))
            ),
        }
    }
    // The node and its vnodes are unharmed.
    assert_eq!(
        client.get("before").await.unwrap().value(),
        Some(&b"ok"[..])
    );
    client.put("after", "ok").await.unwrap();
    let status = client.node_status(&c.ids[0]).await.unwrap();
    assert!(status.vnodes.iter().all(|v| v.restarts == 0));
    assert!(c.log(0).contains("dropped a malformed request"));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_cookie_is_refused() {
    let c = TestCluster::start("cookie", 1, "").await;
    let other = c.dir.path().join("wrong-cookie.toml");
    let cfg = std::fs::read_to_string(&c.config).unwrap();
    let cfg = cfg
        .replace("test-cookie", "not-the-cookie")
        .replace("connect_timeout_ms = 10000", "connect_timeout_ms = 1000");
    std::fs::write(&other, cfg).unwrap();
    let out = common::cli_with(&other, &["put", "k", "v"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no node answered (wrong cookie"), "{err}");
    assert_eq!(
        c.cli(&["get", "k"]).status.code(),
        Some(1),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_contexts_are_refused() {
    use base64::Engine;
    use ringkv_actors::core::version::CausalContext;
    let c = TestCluster::start("forge", 1, "").await;
    let client = c.client().await;
    client.put("k", "v").await.unwrap();
    for counter in [u64::MAX, 1 << 40] {
        let mut ctx = CausalContext::default();
        ctx.seen.0.insert(c.ids[0].clone(), counter);
        let bytes = ringkv_actors::protocol::encode_context(&ctx);
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let forged = ringkv::Context::from_base64(&text).unwrap();
        let err = client
            .put_with("k", "x", &RequestOptions::with_context(forged))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, KvError::BadContext(m) if m.contains("never made")),
            "{err:?}"
        );
    }
    assert_eq!(
        client.get("k").await.unwrap().value(),
        Some(&b"v"[..]),
        "nothing changed"
    );
    let status = client.node_status(&c.ids[0]).await.unwrap();
    assert!(
        status.vnodes.iter().all(|v| v.restarts == 0),
        "no vnode crashed"
    );
}
