//! Configuration: the settings file's model, its validation and its errors.

pub mod http2;
pub mod routes;
pub mod secrets;
pub mod settings;
pub mod store;
pub mod tls;
pub mod tokens;
