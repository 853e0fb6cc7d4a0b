//! Everything that runs inside a ringkv node: actors, wire protocol, storage and pure cores.
//!
//! The `core` modules are synchronous and free of actor imports; actors hold state, route
//! messages and call them.

pub mod actors;
pub mod context;
pub mod coordinator;
pub mod core;
pub mod membership;
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
pub mod transport;
pub mod vnode;

pub use node::Node;
