//! Operations: the operator listener (metrics, health, status), the metrics
//! themselves, the log line format, memory housekeeping and the `health`
//! command's probe.

pub mod health;
pub mod log_format;
pub(crate) mod memory;
pub mod metrics;
pub(crate) mod operator;
