//! Runtime membership: the node's current placement ([`ring_cell`]), the Membership actor that
//! adopts, proposes and advances placements ([`actor`]), ownership transfers that stream a
//! partition to its new replicas ([`transfer`]), and the Cluster actor that keeps a link to
//! every member and detects failures ([`links`]).

pub mod actor;
pub mod links;
pub mod ring_cell;
pub mod transfer;

pub use actor::{adopt, observed, transfer_done};
