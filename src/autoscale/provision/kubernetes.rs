//! The Kubernetes provisioner: not built yet; every call fails with a clear error.

use serde::{Deserialize, Serialize};

use super::NodeSpec;

/// `[autoscale.kubernetes]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {}

/// Scales a StatefulSet.
#[derive(Debug)]
pub struct Kubernetes {
    _cfg: KubernetesConfig,
}

impl Kubernetes {
    /// A provisioner for `cfg`.
    pub fn new(cfg: KubernetesConfig) -> Result<Kubernetes, String> {
        Err(format!("the kubernetes provisioner is not built yet ({cfg:?})"))
    }
    /// Adds one pod.
    pub async fn provision(&self) -> Result<NodeSpec, String> {
        Err("not built".into())
    }
    /// Removes the pod `id`.
    pub async fn release(&self, _id: &str) -> Result<(), String> {
        Err("not built".into())
    }
    /// The pod to drain next.
    pub fn removal_candidate(&self, members: &[String]) -> Option<String> {
        super::newest(members)
    }
}
