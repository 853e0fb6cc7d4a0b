//! On-disk state of a node: per-vnode redb files and the node-wide commit log.

pub mod commit_log;
pub mod disk_guard;
pub mod dot_sequence;
pub mod durable_u64;
pub mod hint_store;
pub mod incarnation;
pub mod log_index;
pub mod log_record;
pub mod memtable;
pub mod object_cache;
pub mod stored;
pub mod vnode_store;
