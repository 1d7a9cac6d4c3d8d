//! Why the streaming filter refused its input, and the failure classes the
//! proxy counts.

/// Why the streaming filter refused its input. Offsets are byte positions in
/// the whole stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("invalid JSON at byte {0}")]
    Syntax(u64),
    #[error("invalid UTF-8 at byte {0}")]
    InvalidUtf8(u64),
    #[error("duplicate object key ending at byte {0}")]
    DuplicateKey(u64),
    #[error("JSON nesting exceeds the maximum depth of {0}")]
    TooDeep(usize),
    #[error("number out of range at byte {0}")]
    NumberOutOfRange(u64),
    #[error("input ended inside a JSON value")]
    Truncated,
    #[error("the response is not the expected envelope")]
    UnexpectedShape,
    /// A broken internal invariant; reported rather than panicking so a bug
    /// fails one response instead of the worker.
    #[error("internal filter error")]
    Internal,
}

impl StreamError {
    /// The reference filter's classification of the same failure.
    pub fn failure(&self) -> FilterFailure {
        match self {
            StreamError::UnexpectedShape => FilterFailure::UnexpectedShape,
            _ => FilterFailure::Malformed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterFailure {
    Malformed,
    UnexpectedShape,
}

impl FilterFailure {
    pub fn label(self) -> &'static str {
        match self {
            FilterFailure::Malformed => "malformed",
            FilterFailure::UnexpectedShape => "malformed",
        }
    }
}

pub struct Filtered {
    pub body: Vec<u8>,
    pub removed: usize,
}
