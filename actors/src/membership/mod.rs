//! Runtime membership: the node's current placement ([`ring_cell`]), the Membership actor that
//! adopts, proposes and advances placements ([`actor`]), and ownership transfers that stream
//! a partition to its new replicas ([`transfer`]).

pub mod actor;
pub mod ring_cell;
pub mod transfer;

pub use actor::{adopt, observed, transfer_done};
