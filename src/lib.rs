//! ringkv: a Dynamo-style distributed key-value store built on ractor actors.
//!
//! This crate is the edge: the client SDK ([`Client`]), configuration loading, the local
//! cluster launcher and the benchmark. What runs inside a node lives in `ringkv-actors`.

pub mod autoscale;
pub mod bench;
pub mod certs;
pub mod client;
pub mod config;
pub mod console;
pub mod launcher;

pub use client::{Client, ClientConfig, Context, GetResult, KvError, RequestOptions};
pub use config::ClusterConfig;
