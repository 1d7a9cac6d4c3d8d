//! End-user tokens, as Capture issues and honours them (capture-api-notes
//! §1.3, §4): an authorization code for a user (`/access/getAuthorizationCode`),
//! exchanged by the client at `/oauth/token` for an access token and a
//! single-use refresh token; or an access token made directly
//! (`/access/getAccessToken`). A call with a token reaches only its user's
//! record: any selector it carries is ignored.

use std::time::{Duration, Instant};

use super::*;

/// Access tokens live this long (Capture's default hour).
const LIFETIME: Duration = Duration::from_secs(3600);

pub(crate) struct Tokens {
    access: HashMap<String, (String, Instant)>,
    refresh: HashMap<String, String>,
    codes: HashMap<String, String>,
    rng: Lcg,
}

impl Tokens {
    pub(crate) fn new() -> Tokens {
        // Tokens must not be guessable from the records' fixed seed.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x70CE_5EED)
            ^ u64::from(std::process::id()).rotate_left(32);
        Tokens {
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            rng: Lcg::seeded(seed),
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        let mut s = String::from(prefix);
        for _ in 0..6 {
            s.push_str(&format!("{:08x}", self.rng.next_u32()));
        }
        s
    }

    /// The user an access token stands for.
    pub(crate) fn user(&self, token: &str) -> ApiResult<&str> {
        match self.access.get(token) {
            Some((uuid, expires)) if Instant::now() < *expires => Ok(uuid),
            _ => Err(ApiError::new(
                414,
                "access_token_expired",
                "the access token is not valid".to_string(),
                Some("access_token"),
            )),
        }
    }

    pub(crate) fn code_for(&mut self, uuid: &str) -> Value {
        let code = self.fresh("c");
        self.codes.insert(code.clone(), uuid.to_string());
        json!({ "authorizationCode": code, "stat": "ok" })
    }

    pub(crate) fn access_for(&mut self, uuid: &str) -> Value {
        let token = self.fresh("a");
        self.access
            .insert(token.clone(), (uuid.to_string(), Instant::now() + LIFETIME));
        json!({ "access_token": token, "expires_in": LIFETIME.as_secs(), "stat": "ok" })
    }

    /// `/oauth/token`: a code or a refresh token (each single-use) for a
    /// new access token and refresh token. The answer also carries the
    /// user's record, as Capture's sign-in answers do.
    pub(crate) fn exchange(&mut self, params: &Params) -> ApiResult<(String, Value)> {
        let uuid = match params.get("grant_type") {
            Some("authorization_code") => {
                let code = params
                    .get("code")
                    .ok_or_else(|| ApiError::missing("code"))?;
                params
                    .get("redirect_uri")
                    .ok_or_else(|| ApiError::missing("redirect_uri"))?;
                self.codes.remove(code).ok_or_else(|| {
                    ApiError::new(
                        415,
                        "authorization_code_expired",
                        "the authorization code is not valid".to_string(),
                        Some("code"),
                    )
                })?
            }
            Some("refresh_token") => {
                let token = params
                    .get("refresh_token")
                    .ok_or_else(|| ApiError::missing("refresh_token"))?;
                self.refresh.remove(token).ok_or_else(|| {
                    ApiError::invalid("refresh_token", "the refresh token is not valid")
                })?
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "grant_type",
                    format!("{other} is not authorization_code or refresh_token"),
                ))
            }
            None => return Err(ApiError::missing("grant_type")),
        };
        let mut answer = self.access_for(&uuid);
        let refresh = self.fresh("r");
        self.refresh.insert(refresh.clone(), uuid.clone());
        if let Value::Object(m) = &mut answer {
            m.insert("refresh_token".into(), refresh.into());
        }
        Ok((uuid, answer))
    }
}
