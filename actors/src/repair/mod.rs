//! Repair: everything that brings replicas back to agreement in the background, beside the
//! request path. Hinted handoff returns what fallbacks held for a down owner; anti-entropy
//! compares merkle trees between replicas and copies the keys that differ; the reaper removes
//! tombstones once every replica holds them.

pub mod aae;
pub mod exchange;
pub mod hints;
pub mod reaper;
