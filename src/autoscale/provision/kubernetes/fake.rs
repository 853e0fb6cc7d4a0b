//! A fake Kubernetes API server for the provisioner's tests: a real TCP listener serving
//! the scale subresource and pods of one StatefulSet, with Kubernetes-style Status errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub(super) const SCALE: &str = "/apis/apps/v1/namespaces/default/statefulsets/ringkv/scale";
pub(super) const PODS: &str = "/api/v1/namespaces/default/pods/";

/// A request the fake API server received.
#[derive(Debug, Clone)]
pub(super) struct Req {
    pub(super) method: String,
    pub(super) path: String,
    /// Lowercased names.
    pub(super) headers: HashMap<String, String>,
    pub(super) body: String,
}

/// State of the fake Kubernetes API: one StatefulSet `ringkv` in `default`.
pub(super) struct Fake {
    pub(super) replicas: u64,
    pub(super) resource_version: u64,
    /// GETs seen per pod: the 1st is 404 (not created yet), later ones Pending until the
    /// `ip_on`-th, from which the "scheduler" has assigned 10.1.0.(10 + ordinal).
    pub(super) pod_gets: HashMap<String, u32>,
    pub(super) ip_on: u32,
    /// Every request is answered with this Status error instead.
    pub(super) fail: Option<(u16, &'static str, &'static str)>,
    /// Answer with chunked bodies instead of Content-Length.
    pub(super) chunked: bool,
    /// After each GET of the scale, someone else adds a replica (a concurrent `kubectl scale`).
    pub(super) race: bool,
    /// Pod GETs before the `ip_on`-th show a terminating pod of the same name with an old IP.
    pub(super) terminating: bool,
    pub(super) requests: Vec<Req>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (code, body)
}

impl Fake {
    fn scale(&self) -> Value {
        json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": "ringkv", "namespace": "default",
                         "resourceVersion": self.resource_version.to_string()},
            "spec": {"replicas": self.replicas}, "status": {"replicas": self.replicas}})
    }

    fn answer(&mut self, req: &Req) -> (u16, Value) {
        if let Some((code, reason, message)) = self.fail {
            return status(code, reason, message);
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", SCALE) => {
                let reply = self.scale();
                if self.race {
                    self.replicas += 1;
                    self.resource_version += 1;
                }
                (200, reply)
            }
            ("PATCH", SCALE) => {
                if req.headers.get("content-type").map(String::as_str)
                    != Some("application/merge-patch+json")
                {
                    return status(415, "UnsupportedMediaType", "unsupported patch type");
                }
                let patch: Value = serde_json::from_str(&req.body).unwrap();
                // Optimistic concurrency, as the API server does: a patch naming a stale
                // resourceVersion is refused.
                let current = self.resource_version.to_string();
                let rv = patch.pointer("/metadata/resourceVersion");
                if rv.is_some_and(|rv| rv.as_str() != Some(current.as_str())) {
                    return status(
                        409,
                        "Conflict",
                        "Operation cannot be fulfilled on statefulsets.apps \"ringkv\": the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                self.replicas = patch.pointer("/spec/replicas").unwrap().as_u64().unwrap();
                self.resource_version += 1;
                (200, self.scale())
            }
            ("GET", p) if p.starts_with(PODS) => {
                let name = &p[PODS.len()..];
                let k: u64 = name.strip_prefix("ringkv-").unwrap().parse().unwrap();
                let gets = self.pod_gets.entry(name.to_string()).or_default();
                *gets += 1;
                if self.terminating && *gets < self.ip_on {
                    // The previous pod of this name, deleted by an earlier scale-in, is still
                    // shutting down with its old IP.
                    let pod = json!({"kind": "Pod",
                        "metadata": {"name": name, "deletionTimestamp": "2025-01-01T00:00:00Z"},
                        "status": {"phase": "Running", "podIP": "10.9.9.9"}});
                    return (200, pod);
                }
                if k >= self.replicas || *gets == 1 {
                    return status(404, "NotFound", &format!("pods \"{name}\" not found"));
                }
                let mut pod = json!({"kind": "Pod", "metadata": {"name": name},
                                     "status": {"phase": "Pending"}});
                if *gets >= self.ip_on {
                    pod["status"] =
                        json!({"phase": "Running", "podIP": format!("10.1.0.{}", 10 + k)});
                }
                (200, pod)
            }
            _ => status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        }
    }
}

/// Starts the fake API server on 127.0.0.1:0; returns its URL.
pub(super) async fn serve(fake: Arc<Mutex<Fake>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let fake = fake.clone();
            tokio::spawn(async move {
                let req = read_request(&mut conn).await;
                let (code, body, chunked) = {
                    let mut f = fake.lock().unwrap();
                    f.requests.push(req.clone());
                    let (code, body) = f.answer(&req);
                    (code, body.to_string(), f.chunked)
                };
                let mut out = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nConnection: close\r\n"
                );
                if chunked {
                    // Three chunks, one with an extension, cut at arbitrary points.
                    let (a, rest) = body.split_at(body.len() / 3);
                    let (b, c) = rest.split_at(rest.len() / 2);
                    out += "Transfer-Encoding: chunked\r\n\r\n";
                    for (i, part) in [a, b, c].iter().enumerate() {
                        let ext = if i == 1 { ";name=value" } else { "" };
                        out += &format!("{:x}{ext}\r\n{part}\r\n", part.len());
                    }
                    out += "0\r\n\r\n";
                } else {
                    out += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
                }
                let _ = conn.write_all(out.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    url
}

async fn read_request(conn: &mut tokio::net::TcpStream) -> Req {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap().split(' ');
    let (method, path) = (
        start.next().unwrap().to_string(),
        start.next().unwrap().to_string(),
    );
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + 4 + len {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(buf[head_end + 4..head_end + 4 + len].to_vec()).unwrap();
    Req {
        method,
        path,
        headers,
        body,
    }
}

/// A fake holding a StatefulSet of `replicas` pods, answering normally.
pub(super) fn fake(replicas: u64) -> Arc<Mutex<Fake>> {
    Arc::new(Mutex::new(Fake {
        replicas,
        resource_version: 100,
        pod_gets: HashMap::new(),
        ip_on: 3,
        fail: None,
        chunked: false,
        race: false,
        terminating: false,
        requests: Vec::new(),
    }))
}
