//! Everything that runs inside a ringkv node: actors, wire protocol, storage and pure cores.
//!
//! The `core` modules are synchronous and free of actor imports; actors hold state, route
//! messages and call them. The folders follow the supervision tree:
//!
//! ```text
//! node::supervisor::NodeSupervisor   opens the commit log, replays it, starts the rest in order
//! ├── NodeServer                     ractor_cluster listener
//! ├── membership::links::Cluster     links to every member, re-dials, failure detector
//! ├── vnode::supervisor              restarts failed vnodes, starts and releases them on ownership
//! │   └── vnode::Vnode × partitions  single writer of one partition's redb file
//! ├── gateway::client::Router        client requests, one coordinator task each
//! ├── gateway::peer::Replica         other nodes' replica messages
//! ├── membership::actor::Membership  placements: adopt, propose, advance; transfers in
//! ├── repair::hints::Handoff         hints back to their owners
//! ├── repair::aae::AaeScheduler      anti-entropy exchanges and reaping
//! └── gateway::admin::Admin          status, stats and fault drills
//! ```
//!
//! Beside the tree: `context` (what the actors share), `coordinator` and `replica_io` (the
//! request path), `peer_link` and `peer_table` (per-peer batching and state),
//! `partition_table` (local vnodes and the read path), `transport` and `tls` (how links are
//! made), `protocol`, `storage`, `core`.

pub mod context;
pub mod coordinator;
pub mod core;
pub mod fuzz_checks;
pub mod gateway;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod partition_table;
pub mod peer_link;
pub mod peer_table;
pub mod protocol;
pub mod repair;
pub mod replica_io;
pub mod request_stats;
pub mod settings;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod vnode;

pub use node::Node;
