//! recordgate: an inline enforcement gateway for Capture-style user-record APIs.
//!
//! A request flows one way through the stages of [`proxy`]: intake (limits,
//! codings, body, parameters) -> decide (one [`decide::authorize`] for record
//! routes and the management API: credentials, client address and allow-list,
//! route and features, grants, probe refusal, rate limit) -> request filter
//! ([`filter::request`]) -> forward (the upstream call) -> relay (the response
//! filter, [`filter::response`], buffered or streamed) -> respond (one exit that
//! renders errors and records the outcome).
//!
//! Internals are `pub(crate)`; what is `pub` is exposed on purpose for the
//! integration tests, fuzz targets and benches.

pub mod cidr;
pub mod config;
pub(crate) mod connection;
pub mod decide;
pub mod errors;
pub mod filter;
pub(crate) mod management;
pub mod ops;
pub mod params;
pub mod policy;
pub(crate) mod proxy;
pub mod rate;
pub mod schema;
pub mod server;
pub mod tls;
pub mod tokens;
