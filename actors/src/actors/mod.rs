//! The actors of a node, one per file.

pub mod admin;
pub mod cluster;
pub mod node_supervisor;
pub mod replica;
pub mod router;
