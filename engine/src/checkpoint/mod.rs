//! The checkpoint/commit protocol: epochs, what is stored for each, and the pure decisions a
//! worker takes when it starts (what to re-commit, where to resume).

mod protocol;

pub use protocol::*;

/// A checkpoint epoch number; epochs increase by one from 1, and survive restarts.
pub type Epoch = u64;
