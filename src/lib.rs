//! recordgate: an inline enforcement gateway for Capture-style user-record APIs.
//!
//! Data flows one way: request -> auth -> policy decision -> request body filter
//! -> upstream -> response body filter -> client.

pub mod admin;
pub mod allowlist;
pub mod auth;
pub mod client_ip;
pub mod enforce;
pub mod errors;
pub mod filter;
pub mod gateway;
pub mod header_deadline;
pub mod json;
pub mod log_format;
pub mod management;
pub mod memory;
pub mod metrics;
pub mod oracle;
pub mod params;
pub mod policy;
pub mod response_filter;
pub mod routes;
pub mod schema;
pub mod server;
pub mod settings;
pub mod stream_filter;
pub mod string_ends;
pub mod upstream;
