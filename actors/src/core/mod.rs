//! Pure, synchronous cores: no actor or async imports, unit- and property-tested on their own.

pub mod codec;
pub mod limits;
pub mod merkle;
pub mod placement;
pub mod primaries;
pub mod quorum;
pub mod read_order;
pub mod ring;
pub mod version;
