//! Files: JSON-lines/CSV input partitions and an exactly-once JSON-lines output.

pub mod sink;
pub mod source;
