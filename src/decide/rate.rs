//! The rate-limit step of the decision: the last one, so only a call that
//! would otherwise be permitted uses the client's budget. A caller that
//! failed authentication, the allow-list or a feature check costs its
//! client nothing (and an impostor cannot drain someone else's budget).
//!
//! The limit is the client's own (policy) or the settings' default; the
//! bucket is the client's, carried from one policy version to the next by
//! the store. Limits are per gateway process (per replica).

use crate::errors::ApiError;
use crate::policy::Client;
use crate::rate::{now_ns, retry_after_secs, RateLimit};

/// Takes one call from the client's budget, or refuses it with 429 and the
/// seconds to wait.
pub fn check(client: &Client, default: Option<&RateLimit>) -> Result<(), ApiError> {
    let Some(limit) = client.rate_limit.as_ref().or(default) else {
        return Ok(());
    };
    limit
        .admit(&client.rate_bucket, now_ns())
        .map_err(|wait| ApiError::rate_limited(limit, retry_after_secs(wait)))
}
