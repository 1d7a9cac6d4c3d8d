//! Operations: the operator listener (metrics, health, status), the metrics
//! themselves, the log line format and memory housekeeping.

pub mod log_format;
pub(crate) mod memory;
pub mod metrics;
pub(crate) mod operator;
