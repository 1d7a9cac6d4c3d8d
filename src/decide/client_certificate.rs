//! The client certificate as a second factor: a client whose policy entry
//! sets `tls_client_subject` must call over a mutual-TLS connection whose
//! verified client certificate carries exactly that subject commonName, in
//! addition to its secret. The TLS listener's `client_ca` decides which
//! certificates verify; this step decides which client each one may be.

use crate::errors::ApiError;
use crate::policy::Client;

/// `presented` is the verified certificate's subject commonName, if the
/// connection has one. Compared byte for byte: the name is not a secret
/// (it travels in the clear in TLS 1.2), so a constant-time comparison buys
/// nothing.
pub fn check(client: &Client, presented: Option<&str>) -> Result<(), ApiError> {
    match client.tls_client_subject.as_deref() {
        None => Ok(()),
        Some(required) if presented == Some(required) => Ok(()),
        Some(_) => Err(ApiError::client_certificate_denied()),
    }
}
