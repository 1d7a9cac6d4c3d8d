//! Attribute paths (`primaryAddress.city`): parsed once, compared as
//! segments.

use std::fmt;
use std::str::FromStr;

/// Top-level attributes every record has; readable by every client, writable by none.
pub const RESERVED: [&str; 4] = ["id", "uuid", "created", "lastUpdated"];

pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// Why an attribute path string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("attribute path is empty")]
    Empty,
    #[error("attribute path {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("attribute path {0:?} has a malformed plural element selector (expected name#digits)")]
    BadSelector(String),
}

/// A parsed attribute path such as `primaryAddress.city` or `/statuses#5253/status`.
///
/// Plural element selectors (`#<digits>`) are stripped from the segments, which is
/// what schema checks need (a grant on `statuses.status` covers every element); the
/// element ids are kept separately for callers that need to address the element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttrPath {
    pub(super) segments: Vec<String>,
    pub(super) elements: Vec<Option<u64>>,
}

impl AttrPath {
    /// Accepts `.` and `/` as separators (interchangeably) and one leading `/`,
    /// because the documented syntax drifted between API versions.
    pub fn parse(input: &str) -> Result<AttrPath, PathError> {
        let body = input.strip_prefix('/').unwrap_or(input);
        if body.is_empty() {
            return Err(PathError::Empty);
        }
        let mut segments = Vec::new();
        let mut elements = Vec::new();
        for raw in body.split(['.', '/']) {
            let (name, element) = match raw.split_once('#') {
                None => (raw, None),
                Some((name, digits)) => {
                    let valid = !name.is_empty()
                        && !digits.is_empty()
                        && digits.bytes().all(|b| b.is_ascii_digit());
                    let id = digits.parse::<u64>().ok().filter(|_| valid);
                    match id {
                        Some(id) => (name, Some(id)),
                        None => return Err(PathError::BadSelector(input.to_owned())),
                    }
                }
            };
            if name.is_empty() {
                return Err(PathError::EmptySegment(input.to_owned()));
            }
            segments.push(name.to_owned());
            elements.push(element);
        }
        Ok(AttrPath { segments, elements })
    }

    /// Attribute names, selectors stripped. Never empty.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The plural element id given for segment `index` (`photos#2` -> `Some(2)`).
    pub fn element(&self, index: usize) -> Option<u64> {
        self.elements.get(index).copied().flatten()
    }

    /// Whether any segment carried a `#<digits>` element selector.
    pub fn has_selector(&self) -> bool {
        self.elements.iter().any(Option::is_some)
    }

    /// A single-segment path naming one of [`RESERVED`].
    pub fn is_reserved(&self) -> bool {
        matches!(self.segments.as_slice(), [only] if is_reserved(only))
    }

    /// Dotted form including element selectors (`statuses#5253.status`), for
    /// messages that must show what the client actually sent.
    pub fn to_selector_string(&self) -> String {
        let mut out = String::new();
        for (i, (seg, el)) in self.segments.iter().zip(&self.elements).enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push_str(seg);
            if let Some(id) = el {
                out.push('#');
                out.push_str(&id.to_string());
            }
        }
        out
    }
}

impl fmt::Display for AttrPath {
    /// Dotted form without element selectors (`primaryAddress.city`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(seg)?;
        }
        Ok(())
    }
}

impl FromStr for AttrPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttrPath::parse(s)
    }
}
