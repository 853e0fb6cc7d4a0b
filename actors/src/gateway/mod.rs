//! A node's inbound edges: client requests ([`client`], the Router), Redis-protocol clients
//! ([`resp`]), other nodes' replica messages ([`peer`], the Replica endpoint), and admin
//! requests ([`admin`]). Each decodes and
//! hands the work to the coordinator, the vnodes, repair or membership.

pub mod admin;
pub mod client;
pub mod metrics;
pub mod peer;
pub mod resp;
