//! Client features (Capture's permission model) as a small bit set, so the
//! per-request check is one AND.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    Owner,
    AccessIssuer,
    DirectAccess,
    DirectReadAccess,
    LoginClient,
}

impl Feature {
    pub const ALL: [Feature; 5] = [
        Feature::Owner,
        Feature::AccessIssuer,
        Feature::DirectAccess,
        Feature::DirectReadAccess,
        Feature::LoginClient,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Owner => "owner",
            Feature::AccessIssuer => "access_issuer",
            Feature::DirectAccess => "direct_access",
            Feature::DirectReadAccess => "direct_read_access",
            Feature::LoginClient => "login_client",
        }
    }

    /// Capture's wording for a bad name: "X is not a valid feature name".
    pub fn parse(s: &str) -> Result<Feature, String> {
        Feature::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("{s} is not a valid feature name"))
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureSet(u8);

impl FeatureSet {
    pub const fn empty() -> Self {
        FeatureSet(0)
    }

    pub fn of(features: &[Feature]) -> Self {
        let mut s = FeatureSet(0);
        for f in features {
            s.insert(*f);
        }
        s
    }

    pub fn insert(&mut self, f: Feature) {
        self.0 |= f.bit();
    }

    /// Held features, with the implications Capture documents applied:
    /// `direct_access` implies `direct_read_access`.
    pub fn effective(self) -> Self {
        let mut s = self;
        if s.contains(Feature::DirectAccess) {
            s.insert(Feature::DirectReadAccess);
        }
        s
    }

    pub fn contains(self, f: Feature) -> bool {
        self.0 & f.bit() != 0
    }

    /// True when the client holds at least one of `any_of`.
    pub fn intersects(self, any_of: FeatureSet) -> bool {
        self.effective().0 & any_of.0 != 0
    }

    /// True when the two sets share a feature as held (no implications).
    pub fn overlaps(self, other: FeatureSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|f| f.name().to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_access_implies_direct_read_access() {
        let s = FeatureSet::of(&[Feature::DirectAccess]);
        assert!(s.intersects(FeatureSet::of(&[Feature::DirectReadAccess])));
        let r = FeatureSet::of(&[Feature::DirectReadAccess]);
        assert!(!r.intersects(FeatureSet::of(&[Feature::DirectAccess])));
    }

    #[test]
    fn unknown_feature_uses_capture_wording() {
        assert_eq!(
            Feature::parse("ninja_superuser").unwrap_err(),
            "ninja_superuser is not a valid feature name"
        );
    }
}
