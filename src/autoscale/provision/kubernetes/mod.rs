//! The Kubernetes provisioner: scales a StatefulSet through its `scale` subresource. A new node
//! is the pod with the next ordinal; a node is released by lowering `replicas`, which removes
//! only the highest ordinal, so only that pod can be released. Membership stays with the
//! autoscaler: it commits the new pod's join, and drains a pod with a leave before releasing it.

mod http;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::NodeSpec;

/// `[autoscale.kubernetes]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// API base URL, plain HTTP: by default a `kubectl proxy` sidecar, which authenticates.
    pub api_url: String,
    /// Namespace of the StatefulSet and its pods.
    pub namespace: String,
    /// Name of the StatefulSet whose pods are the nodes (pod `NAME-K` runs node id `NAME-K`).
    pub statefulset: String,
    /// Port every pod's node listens on.
    pub port: u16,
    /// File whose contents are sent as `Authorization: Bearer …` (re-read per request).
    pub token_file: Option<PathBuf>,
    /// Limit on each HTTP request to the API, seconds.
    pub timeout_secs: u64,
    /// How long `provision` waits for the new pod to get an IP, seconds.
    pub ready_timeout_secs: u64,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            api_url: "http://127.0.0.1:8001".to_string(),
            namespace: "default".to_string(),
            statefulset: "ringkv".to_string(),
            port: 7400,
            token_file: None,
            timeout_secs: 10,
            ready_timeout_secs: 300,
        }
    }
}

/// Scales a StatefulSet through the Kubernetes API.
#[derive(Debug)]
pub struct Kubernetes {
    cfg: KubernetesConfig,
    api: http::Endpoint,
    /// Per request; a field rather than `cfg.timeout_secs` so tests can use milliseconds.
    timeout: Duration,
    /// How long to wait for a new pod's IP (tests shorten it like `timeout`).
    ready_timeout: Duration,
    /// Pause between polls of a new pod: a second in service, short in tests.
    poll_interval: Duration,
}

/// A failed API call: `status` is the HTTP status when the server answered.
#[derive(Debug)]
struct ApiError {
    status: Option<u16>,
    message: String,
}

/// The scale subresource as read: replicas and the version a patch must match.
struct Scale {
    replicas: u64,
    resource_version: Option<String>,
}

impl Kubernetes {
    /// A provisioner for `cfg`, checked: a plain `http://` URL, names that make valid node ids.
    pub fn new(cfg: KubernetesConfig) -> Result<Kubernetes, String> {
        let api = http::Endpoint::parse(&cfg.api_url)?;
        // Pod names are node ids, so the StatefulSet's name must be one too (and a DNS label).
        let name = &cfg.statefulset;
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !label(name) {
            return Err(format!(
                "statefulset {name:?}: use lowercase letters, digits and '-' (its pod names are the node ids)"
            ));
        }
        if !label(&cfg.namespace) {
            return Err(format!(
                "namespace {:?} is not a valid namespace",
                cfg.namespace
            ));
        }
        if cfg.port == 0 || cfg.timeout_secs == 0 || cfg.ready_timeout_secs == 0 {
            return Err("port, timeout_secs and ready_timeout_secs must be above 0".into());
        }
        Ok(Kubernetes {
            timeout: Duration::from_secs(cfg.timeout_secs),
            ready_timeout: Duration::from_secs(cfg.ready_timeout_secs),
            poll_interval: Duration::from_secs(1),
            api,
            cfg,
        })
    }

    /// Adds one pod (`replicas + 1`) and returns it once it has an IP; on failure scales back.
    pub async fn provision(&self) -> Result<NodeSpec, String> {
        let scale = self.scale().await.map_err(|e| e.message)?;
        let pod = self.pod_name(scale.replicas);
        self.set_replicas(&scale, scale.replicas + 1)
            .await
            .map_err(|e| e.message)?;
        tracing::info!(pod, replicas = scale.replicas + 1, "kubernetes: scaled out");
        let waited = self.wait_for_ip(&pod).await;
        match waited {
            Ok(ip) => Ok(NodeSpec {
                id: pod,
                addr: SocketAddr::new(ip, self.cfg.port).to_string(),
            }),
            Err(why) => {
                // The pod never became usable: undo the scale-out here, since an error carries
                // no id to release. `release` is idempotent, so a caller's own release is safe.
                let undo = match self.release(&pod).await {
                    Ok(()) => "scaled back".to_string(),
                    Err(e) => format!("scaling back failed: {e}"),
                };
                Err(format!("new pod {pod}: {why}; {undo}"))
            }
        }
    }

    /// Removes pod `id` by lowering `replicas`: it must be the highest ordinal; Ok if gone.
    pub async fn release(&self, id: &str) -> Result<(), String> {
        let ordinal = self.ordinal(id).ok_or_else(|| {
            format!(
                "{id} is not a pod of StatefulSet {} (ids are {}-N)",
                self.cfg.statefulset, self.cfg.statefulset
            )
        })?;
        let scale = self.scale().await.map_err(|e| e.message)?;
        if ordinal >= scale.replicas {
            return Ok(());
        }
        let highest = self.pod_name(scale.replicas - 1);
        if ordinal != scale.replicas - 1 {
            return Err(format!(
                "cannot release {id}: lowering replicas of StatefulSet {} from {} removes only \
                 its highest pod, {highest}; drain and release {highest} instead",
                self.cfg.statefulset, scale.replicas
            ));
        }
        self.set_replicas(&scale, scale.replicas - 1)
            .await
            .map_err(|e| e.message)?;
        tracing::info!(
            pod = id,
            replicas = scale.replicas - 1,
            "kubernetes: scaled in"
        );
        Ok(())
    }

    /// The member pod with the highest ordinal (the only one `release` can remove), if any.
    pub fn removal_candidate(&self, members: &[String]) -> Option<String> {
        members
            .iter()
            .filter_map(|m| Some((self.ordinal(m)?, m)))
            .max_by_key(|(k, _)| *k)
            .map(|(_, m)| m.clone())
    }

    /// `NAME-K`.
    fn pod_name(&self, ordinal: u64) -> String {
        format!("{}-{ordinal}", self.cfg.statefulset)
    }

    /// K of a pod id `NAME-K` (digits only, so `NAME-1x` or `NAME-a-1` are not pods).
    fn ordinal(&self, id: &str) -> Option<u64> {
        let k = id
            .strip_prefix(self.cfg.statefulset.as_str())?
            .strip_prefix('-')?;
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        k.parse().ok()
    }

    fn scale_path(&self) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}/statefulsets/{}/scale",
            self.cfg.namespace, self.cfg.statefulset
        )
    }

    async fn scale(&self) -> Result<Scale, ApiError> {
        let s = self.call("GET", &self.scale_path(), None).await?;
        Ok(Scale {
            // `replicas` is omitted from the JSON when it is 0.
            replicas: s
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            resource_version: s
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// Patches `replicas` to `to`. The read's resourceVersion rides along, so a change made by
    /// anyone else since the read fails with 409 Conflict instead of being overwritten (which
    /// could remove pods that were never drained).
    async fn set_replicas(&self, read: &Scale, to: u64) -> Result<(), ApiError> {
        let mut patch = json!({ "spec": { "replicas": to } });
        if let Some(rv) = &read.resource_version {
            patch["metadata"] = json!({ "resourceVersion": rv });
        }
        self.call("PATCH", &self.scale_path(), Some(patch))
            .await
            .map(drop)
    }

    /// Polls the pod until it has an IP and is not being deleted (a terminating pod of the
    /// same name from an earlier scale-in still shows its old IP), until `ready_timeout`.
    async fn wait_for_ip(&self, pod: &str) -> Result<IpAddr, String> {
        let path = format!("/api/v1/namespaces/{}/pods/{pod}", self.cfg.namespace);
        let deadline = Instant::now() + self.ready_timeout;
        let mut last = "the pod was not created".to_string();
        loop {
            match self.call("GET", &path, None).await {
                Ok(p) => {
                    let terminating = p
                        .pointer("/metadata/deletionTimestamp")
                        .is_some_and(|v| !v.is_null());
                    let ip = p
                        .pointer("/status/podIP")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let phase = p
                        .pointer("/status/phase")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown");
                    match ip.parse::<IpAddr>() {
                        Ok(ip) if !terminating => return Ok(ip),
                        _ if terminating => {
                            last = "an earlier pod of that name is still terminating".into()
                        }
                        _ => last = format!("phase {phase}, no IP yet"),
                    }
                }
                // 404: the StatefulSet controller has not created the pod yet.
                Err(ApiError {
                    status: Some(404), ..
                }) => {}
                // Anything else may be passing (the proxy restarting): keep polling, report it.
                Err(e) => last = e.message,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no IP within {} s (last: {last})",
                    self.ready_timeout.as_secs_f64()
                ));
            }
            tokio::time::sleep(self.poll_interval.min(deadline - now)).await;
        }
    }

    /// One API request; a 2xx reply's JSON body, or an error naming the request, the status
    /// and the `message` of the Status object Kubernetes sends with errors.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, ApiError> {
        let what = format!("kubernetes API {method} {path}");
        let fail = |status, message| ApiError { status, message };
        let mut headers = Vec::new();
        if let Some(file) = &self.cfg.token_file {
            // Re-read every time: projected service-account tokens are rotated in place.
            let token = std::fs::read_to_string(file).map_err(|e| {
                fail(
                    None,
                    format!("{what}: cannot read token_file {}: {e}", file.display()),
                )
            })?;
            headers.push(("Authorization", format!("Bearer {}", token.trim())));
        }
        let bytes = body.map(|b| b.to_string().into_bytes());
        let body = bytes
            .as_deref()
            .map(|b| ("application/merge-patch+json", b));
        let resp = http::send(&self.api, method, path, &headers, body, self.timeout)
            .await
            .map_err(|e| fail(None, format!("{what} at {}: {e}", self.cfg.api_url)))?;
        let json: Option<Value> = serde_json::from_slice(&resp.body).ok();
        if !(200..300).contains(&resp.status) {
            let detail = match json
                .as_ref()
                .and_then(|j| j.get("message"))
                .and_then(Value::as_str)
            {
                Some(m) => m.to_string(),
                None => String::from_utf8_lossy(&resp.body)
                    .trim()
                    .chars()
                    .take(200)
                    .collect(),
            };
            let status = format!("{} {}", resp.status, resp.reason)
                .trim()
                .to_string();
            let msg = if detail.is_empty() {
                format!("{what}: {status}")
            } else {
                format!("{what}: {status}: {detail}")
            };
            return Err(fail(Some(resp.status), msg));
        }
        json.ok_or_else(|| fail(Some(resp.status), format!("{what}: the reply is not JSON")))
    }
}

#[cfg(test)]
mod fake;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::net::TcpListener;

    use super::fake::*;
    use super::*;

    /// A provisioner against `url` with test-sized waits (a polling loop bounded by a deadline).
    fn client(url: &str, token_file: Option<PathBuf>) -> Kubernetes {
        let cfg = KubernetesConfig {
            api_url: url.to_string(),
            token_file,
            ..Default::default()
        };
        let mut k = Kubernetes::new(cfg).unwrap();
        k.poll_interval = Duration::from_millis(5);
        k.ready_timeout = Duration::from_secs(5);
        k.timeout = Duration::from_secs(5);
        k
    }

    fn methods(f: &Arc<Mutex<Fake>>) -> Vec<(String, String)> {
        let f = f.lock().unwrap();
        f.requests
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect()
    }

    #[tokio::test]
    async fn provision_adds_one_replica_and_returns_the_new_pods_ip_and_port() {
        let f = fake(3);
        let k = client(&serve(f.clone()).await, None);
        let node = k.provision().await.unwrap();
        assert_eq!(
            node,
            NodeSpec {
                id: "ringkv-3".into(),
                addr: "10.1.0.13:7400".into()
            }
        );
        let fk = f.lock().unwrap();
        assert_eq!(fk.replicas, 4);
        // Read, patch once, then poll through 404 and Pending to the IP.
        assert_eq!(fk.pod_gets["ringkv-3"], 3);
        let patch = fk.requests.iter().find(|r| r.method == "PATCH").unwrap();
        let body: Value = serde_json::from_str(&patch.body).unwrap();
        assert_eq!(
            body,
            json!({"spec": {"replicas": 4}, "metadata": {"resourceVersion": "100"}})
        );
        assert!(
            fk.requests
                .iter()
                .all(|r| !r.headers.contains_key("authorization"))
        );
    }

    #[tokio::test]
    async fn a_terminating_pod_of_the_same_name_is_not_taken_for_the_new_one() {
        let f = fake(3);
        f.lock().unwrap().terminating = true;
        let k = client(&serve(f.clone()).await, None);
        let node = k.provision().await.unwrap();
        assert_eq!(node.addr, "10.1.0.13:7400");
        assert_eq!(f.lock().unwrap().pod_gets["ringkv-3"], 3);
    }

    #[tokio::test]
    async fn release_lowers_replicas_only_for_the_highest_pod_and_is_idempotent() {
        let f = fake(4);
        let k = client(&serve(f.clone()).await, None);
        let refused = k.release("ringkv-1").await.unwrap_err();
        assert!(
            refused.contains("ringkv-3") && refused.contains("highest"),
            "{refused}"
        );
        assert_eq!(f.lock().unwrap().replicas, 4);
        k.release("ringkv-3").await.unwrap();
        assert_eq!(f.lock().unwrap().replicas, 3);
        // Already gone (just released, or never there): Ok without a patch.
        k.release("ringkv-3").await.unwrap();
        k.release("ringkv-7").await.unwrap();
        let patches = methods(&f).iter().filter(|(m, _)| m == "PATCH").count();
        assert_eq!((f.lock().unwrap().replicas, patches), (3, 1));
        let foreign = k.release("n4").await.unwrap_err();
        assert!(
            foreign.contains("not a pod of StatefulSet ringkv"),
            "{foreign}"
        );
    }

    #[tokio::test]
    async fn api_errors_quote_the_status_and_the_status_message() {
        let f = fake(3);
        let msg = "statefulsets.apps \"ringkv\" is forbidden: User \"system:serviceaccount:default:ringkv\" cannot get resource \"statefulsets/scale\"";
        f.lock().unwrap().fail = Some((403, "Forbidden", msg));
        let k = client(&serve(f.clone()).await, None);
        let err = k.provision().await.unwrap_err();
        assert!(err.contains("403") && err.contains(msg), "{err}");
        assert!(err.contains(&format!("GET {SCALE}")), "{err}");
        let err = k.release("ringkv-2").await.unwrap_err();
        assert!(err.contains("403") && err.contains("is forbidden"), "{err}");
    }

    #[tokio::test]
    async fn a_concurrent_scale_makes_the_patch_conflict_instead_of_overwriting_it() {
        let f = fake(4);
        f.lock().unwrap().race = true;
        let k = client(&serve(f.clone()).await, None);
        let err = k.release("ringkv-3").await.unwrap_err();
        assert!(
            err.contains("409") && err.contains("has been modified"),
            "{err}"
        );
        // Someone else's 5 stands; our 3 would have removed two pods that were never drained.
        assert_eq!(f.lock().unwrap().replicas, 5);
    }

    #[tokio::test]
    async fn chunked_replies_are_parsed() {
        let f = fake(3);
        f.lock().unwrap().chunked = true;
        let k = client(&serve(f.clone()).await, None);
        let node = k.provision().await.unwrap();
        assert_eq!(
            (node.id.as_str(), node.addr.as_str()),
            ("ringkv-3", "10.1.0.13:7400")
        );
        f.lock().unwrap().fail = Some((403, "Forbidden", "chunked and forbidden"));
        let err = k.release("ringkv-3").await.unwrap_err();
        assert!(err.contains("chunked and forbidden"), "{err}");
    }

    #[tokio::test]
    async fn a_pod_that_gets_no_ip_in_time_is_scaled_back() {
        let f = fake(3);
        f.lock().unwrap().ip_on = u32::MAX;
        let mut k = client(&serve(f.clone()).await, None);
        k.ready_timeout = Duration::from_millis(200);
        let err = k.provision().await.unwrap_err();
        assert!(
            err.contains("ringkv-3") && err.contains("no IP") && err.contains("scaled back"),
            "{err}"
        );
        assert!(err.contains("phase Pending"), "{err}");
        let fk = f.lock().unwrap();
        assert_eq!(fk.replicas, 3);
        assert!(
            fk.pod_gets["ringkv-3"] >= 2,
            "polled {} times",
            fk.pod_gets["ringkv-3"]
        );
    }

    #[tokio::test]
    async fn the_token_file_is_sent_as_a_bearer_token() {
        let f = fake(3);
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cr3t-token\n").unwrap();
        let k = client(&serve(f.clone()).await, Some(token.clone()));
        k.release("ringkv-9").await.unwrap();
        let auth = f.lock().unwrap().requests[0]
            .headers
            .get("authorization")
            .cloned();
        assert_eq!(auth.as_deref(), Some("Bearer s3cr3t-token"));
        std::fs::remove_file(&token).unwrap();
        let err = k.release("ringkv-9").await.unwrap_err();
        assert!(err.contains("cannot read token_file"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_closed_port_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut k = client(&url, None);
        k.timeout = Duration::from_millis(100);
        let err = k.release("ringkv-1").await.unwrap_err();
        assert!(err.contains("no complete reply within 100 ms"), "{err}");
        drop(listener);
        let err = k.release("ringkv-1").await.unwrap_err();
        assert!(
            err.contains("cannot connect") && err.contains(&url),
            "{err}"
        );
    }

    #[test]
    fn new_refuses_https_bad_urls_and_names_that_are_not_node_ids() {
        let with = |f: fn(&mut KubernetesConfig)| {
            let mut cfg = KubernetesConfig::default();
            f(&mut cfg);
            Kubernetes::new(cfg)
        };
        let err = with(|c| c.api_url = "https://10.96.0.1:443".into()).unwrap_err();
        assert!(
            err.contains("TLS")
                && err.contains("kubectl proxy")
                && err.contains("http://127.0.0.1:8001"),
            "{err}"
        );
        let err = with(|c| c.api_url = "127.0.0.1:8001".into()).unwrap_err();
        assert!(err.contains("not a URL"), "{err}");
        assert!(with(|c| c.statefulset = "ring.kv".into()).is_err());
        assert!(with(|c| c.port = 0).is_err());
        let ok = with(|_| ()).unwrap();
        assert_eq!(
            (ok.api.host.as_str(), ok.api.port, ok.cfg.port),
            ("127.0.0.1", 8001, 7400)
        );
        let parsed: KubernetesConfig = serde_json::from_str(r#"{"namespace": "kv"}"#).unwrap();
        assert_eq!(
            (parsed.namespace.as_str(), parsed.ready_timeout_secs),
            ("kv", 300)
        );
        assert!(serde_json::from_str::<KubernetesConfig>(r#"{"replicas": 3}"#).is_err());
    }

    #[test]
    fn the_removal_candidate_is_the_member_pod_with_the_highest_ordinal() {
        let k = Kubernetes::new(KubernetesConfig::default()).unwrap();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let members = ids(&[
            "ringkv-2",
            "ringkv-10",
            "ringkv-9",
            "n99",
            "ringkv-x",
            "ringkvx-50",
            "ringkv-1a",
        ]);
        assert_eq!(k.removal_candidate(&members), Some("ringkv-10".into()));
        assert_eq!(k.removal_candidate(&ids(&["n1", "other-5"])), None);
        assert_eq!(k.removal_candidate(&[]), None);
    }
}
