//! `ringkv console` against a real 3-node, 3-replica cluster: its admin views show the actual
//! cluster, its key commands read and write, its exit codes follow the one-shot commands, and a
//! killed node shows as down without failing the command; `aae run` then `aae` show the
//! replicas' merkle roots agreeing.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{TestCluster, describe, wait_until};
use serde_json::Value;

/// Runs `ringkv console -c <line> [--json]`.
fn console(c: &TestCluster, line: &str, json: bool) -> Output {
    let mut args = vec!["console", "-c", line];
    if json {
        args.push("--json");
    }
    c.cli(&args)
}

/// Runs a console command that must succeed and parses its JSON.
fn console_json(c: &TestCluster, line: &str) -> Value {
    let out = console(c, line, true);
    assert_eq!(out.status.code(), Some(0), "{line}: {}", describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{line}: {e}: {}", describe(&out)))
}

fn ids_of(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| n[field].as_str().unwrap().to_string())
        .collect()
}

/// Starts a 3-node, 3-replica cluster whose members are `<prefix>1..3`.
async fn replicated_cluster(prefix: &str) -> TestCluster {
    let mut c = TestCluster::configure(prefix, 3, "");
    let toml = std::fs::read_to_string(&c.config).unwrap();
    assert!(
        toml.contains("replicas = 1\n"),
        "harness config changed:\n{toml}"
    );
    std::fs::write(&c.config, toml.replace("replicas = 1\n", "replicas = 3\n")).unwrap();
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready().await;
    wait_until(
        "every node to report ring agreement",
        Duration::from_secs(60),
        || {
            let out = console(&c, "status", true);
            let agreed = out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| {
                    s["nodes"]
                        .as_array()
                        .is_some_and(|n| n.iter().all(|n| n["ring_agreed"] == true))
                });
            async move { agreed }
        },
    )
    .await;
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn console_shows_the_cluster_and_survives_a_dead_node() {
    let mut c = replicated_cluster("con").await;

    let status = console_json(&c, "status");
    let nodes = &status["nodes"];
    assert_eq!(ids_of(nodes, "id"), c.ids);
    let hashes: BTreeSet<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["ring_hash"].as_str().unwrap())
        .collect();
    assert_eq!(hashes.len(), 1, "one ring everywhere: {status}");
    for n in nodes.as_array().unwrap() {
        assert_eq!(n["up"], true, "{n}");
        assert_eq!(n["ring_agreed"], true, "{n}");
        assert_eq!(
            n["vnodes_total"], 16,
            "N = 3 of 3 nodes: every node holds all: {n}"
        );
        assert_eq!(n["vnodes_serving"], 16, "{n}");
        assert_eq!(n["not_serving"], serde_json::json!([]), "{n}");
    }

    let members = console_json(&c, "members");
    let rows = &members["members"];
    assert_eq!(ids_of(rows, "id"), c.ids);
    for row in rows.as_array().unwrap() {
        assert!(
            row["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{row}"
        );
        for observer in &c.ids {
            assert_eq!(row["views"][observer], true, "{observer} sees {row}");
        }
    }

    let ring = console_json(&c, "ring");
    assert_eq!(ring["partitions"], 16);
    assert_eq!(ring["replicas"], 3);
    let prefs = ring["preference_lists"].as_array().unwrap();
    assert_eq!(prefs.len(), 16);
    for p in prefs {
        let ids: BTreeSet<String> = p
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            ids,
            c.ids.iter().cloned().collect(),
            "distinct replicas: {p}"
        );
    }
    for id in &c.ids {
        assert_eq!(ring["vnodes_per_node"][id], 16, "{ring}");
    }
    let text = console(&c, "ring", false);
    let text = String::from_utf8_lossy(&text.stdout);
    let expected: Vec<String> = c.ids.iter().map(|id| format!("{id}=16")).collect();
    assert!(
        text.contains(&format!("vnodes per node: {}", expected.join(" "))),
        "{text}"
    );

    let stats = console_json(&c, "stats");
    assert_eq!(ids_of(&stats["nodes"], "node"), c.ids);

    let put = console(&c, "put k hello world", false);
    assert_eq!(put.status.code(), Some(0), "{}", describe(&put));
    let get = console(&c, "get k", false);
    assert_eq!(get.status.code(), Some(0), "{}", describe(&get));
    assert_eq!(String::from_utf8_lossy(&get.stdout), "hello world\n");
    let get = console_json(&c, "get k");
    assert_eq!(get["found"], true);
    assert_eq!(get["values"], serde_json::json!(["hello world"]));
    assert!(!get["context"].as_str().unwrap().is_empty(), "{get}");
    assert_eq!(
        console_json(&c, "delete k"),
        serde_json::json!({ "ok": true })
    );

    let missing = console(&c, "get missing", false);
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "(not found)\n");
    let missing = console(&c, "get k", true);
    assert_eq!(
        missing.status.code(),
        Some(1),
        "deleted: {}",
        describe(&missing)
    );

    let bogus = console(&c, "bogus", false);
    assert_eq!(bogus.status.code(), Some(2), "{}", describe(&bogus));
    let err = String::from_utf8_lossy(&bogus.stderr);
    assert!(err.starts_with("error: ") && err.contains("help"), "{err}");

    c.kill(2);
    let (dead, alive) = (c.ids[2].clone(), &c.ids[..2]);
    wait_until(
        "the survivors to see the killed node down",
        Duration::from_secs(60),
        || {
            let members = console_json(&c, "members");
            let row = members["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == dead.as_str())
                .cloned()
                .unwrap();
            let down = alive.iter().all(|o| row["views"][o] == false)
                && row["views"].get(dead.as_str()).is_none();
            async move { down }
        },
    )
    .await;

    let status = console_json(&c, "status");
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes[2]["id"], dead.as_str());
    assert_eq!(nodes[2]["up"], false, "{status}");
    assert!(nodes[..2].iter().all(|n| n["up"] == true), "{status}");
    let text = console(&c, "status", false);
    assert_eq!(text.status.code(), Some(0), "{}", describe(&text));
    let down_line = String::from_utf8_lossy(&text.stdout)
        .lines()
        .find(|l| l.starts_with(&dead))
        .map(str::to_string);
    assert!(
        down_line.as_deref().is_some_and(|l| l.contains("down")),
        "{}",
        describe(&text)
    );

    // Interactive mode with piped input: commands run in order until `quit`.
    let home = c.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let mut child = Command::new(common::bin())
        .arg("--config")
        .arg(&c.config)
        .args(["console", "--json"])
        .env("HOME", &home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"put i interactive value\nget i\nnope\nquit\nget i\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let replies: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.find('{').map(|i| serde_json::from_str(&l[i..]).unwrap()))
        .collect();
    assert_eq!(
        replies.len(),
        2,
        "nothing runs after quit: {}",
        describe(&out)
    );
    assert_eq!(
        replies[1]["values"],
        serde_json::json!(["interactive value"])
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: unknown command `nope`"),
        "{}",
        describe(&out)
    );
    let history = std::fs::read_to_string(home.join(".ringkv_history")).unwrap_or_default();
    assert!(history.contains("get i"), "history saved: {history:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn console_aae_run_leaves_every_partition_equal() {
    let c = replicated_cluster("caae").await;
    for i in 0..5 {
        let put = console(&c, &format!("put aae{i} value {i}"), false);
        assert_eq!(put.status.code(), Some(0), "{}", describe(&put));
    }

    let run = console_json(&c, "aae run");
    let nodes = run["nodes"].as_array().unwrap();
    assert_eq!(ids_of(&run["nodes"], "node"), c.ids);
    for n in nodes {
        assert_eq!(n["up"], true, "{run}");
        assert_eq!(n["errors"], serde_json::json!([]), "{run}");
    }

    let aae = console_json(&c, "aae");
    assert_eq!(aae["all_equal"], true, "{aae}");
    let partitions = aae["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 16, "{aae}");
    for (i, p) in partitions.iter().enumerate() {
        assert_eq!(p["partition"], i, "{p}");
        assert_eq!(p["equal"], true, "{p}");
        let roots = p["roots"].as_object().unwrap();
        let ids: BTreeSet<&String> = roots.keys().collect();
        assert_eq!(ids, c.ids.iter().collect(), "one root per replica: {p}");
        assert!(roots.values().all(Value::is_string), "{p}");
    }

    let text = console(&c, "aae", false);
    assert_eq!(text.status.code(), Some(0), "{}", describe(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("all 16 partitions equal"), "{text}");
}
