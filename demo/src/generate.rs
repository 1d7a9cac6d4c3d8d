//! Deterministic generation of the sample users.

use super::*;

// ---------------------------------------------------------------------------
// Deterministic generation
// ---------------------------------------------------------------------------

/// A 64-bit LCG (Knuth's MMIX constants); quality only needs to be "varied
/// enough to look like data", and determinism keeps demos reproducible.
pub(crate) struct Lcg(u64);

impl Lcg {
    /// SplitMix64 scramble so consecutive seeds give unrelated streams.
    pub(crate) fn seeded(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Lcg(z ^ (z >> 31))
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // The high bits of an LCG are the well-mixed ones.
        (self.0 >> 32) as u32
    }

    pub(crate) fn below(&mut self, n: u32) -> u32 {
        ((u64::from(self.next_u32()) * u64::from(n)) >> 32) as u32
    }

    pub(crate) fn chance(&mut self, numerator: u32, denominator: u32) -> bool {
        self.below(denominator) < numerator
    }

    pub(crate) fn pick(&mut self, items: &[&'static str]) -> &'static str {
        let len = u32::try_from(items.len()).unwrap_or(u32::MAX);
        items.get(self.below(len) as usize).copied().unwrap_or("")
    }

    pub(crate) fn uuid(&mut self) -> String {
        let a = self.next_u32();
        let b = self.next_u32();
        let c = self.next_u32();
        let d = self.next_u32();
        // Version 4 / RFC 4122 variant bits, so it looks like a real random UUID.
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:04x}{:08x}",
            a,
            b >> 16,
            b & 0x0fff,
            ((c >> 16) & 0x3fff) | 0x8000,
            c & 0xffff,
            d
        )
    }
}

pub(crate) const TS_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f %z";

pub(crate) fn format_ts(secs: i64, micros: u32) -> String {
    chrono::DateTime::from_timestamp(secs, micros.saturating_mul(1000))
        .map(|t| t.format(TS_FORMAT).to_string())
        .unwrap_or_default()
}

pub(crate) fn now_ts() -> String {
    chrono::Utc::now().format(TS_FORMAT).to_string()
}

pub(crate) const GIVEN_NAMES: &[&str] = &[
    "Matt", "Ana", "Priya", "Kenji", "Olivia", "Liam", "Sofia", "Noah", "Amara", "Lucas", "Mei",
    "Jonas", "Fatima", "Diego", "Chloe", "Ibrahim", "Hannah", "Mateo", "Aiko", "Elena", "Samuel",
    "Zara", "Viktor", "Grace",
];
pub(crate) const FAMILY_NAMES: &[&str] = &[
    "Parker",
    "Silva",
    "Sharma",
    "Tanaka",
    "Nguyen",
    "Okafor",
    "Rossi",
    "Muller",
    "Kowalski",
    "Haddad",
    "Johansson",
    "Garcia",
    "Chen",
    "Dubois",
    "Novak",
    "O'Brien",
    "Kim",
    "Petrov",
    "Santos",
    "Fischer",
    "Larsen",
    "Moreau",
    "Ibrahim",
    "Walker",
];
pub(crate) const MIDDLE_NAMES: &[&str] =
    &["James", "Marie", "Lee", "Ann", "Jose", "Rae", "Kai", "Jean"];
pub(crate) const GENDERS: &[&str] = &["female", "male", "non-binary", "unspecified"];
pub(crate) const STREETS: &[&str] = &[
    "Maple Street",
    "Oak Avenue",
    "Pine Road",
    "Cedar Lane",
    "Elm Street",
    "Lakeview Drive",
    "Sunset Boulevard",
    "Hillcrest Way",
    "River Road",
    "Park Place",
    "Main Street",
    "Willow Court",
];
/// City, state and ZIP prefix stay consistent with each other.
pub(crate) const CITIES: &[(&str, &str, &str)] = &[
    ("Portland", "OR", "972"),
    ("Denver", "CO", "802"),
    ("Austin", "TX", "787"),
    ("Seattle", "WA", "981"),
    ("Boston", "MA", "021"),
    ("Chicago", "IL", "606"),
    ("Atlanta", "GA", "303"),
    ("Phoenix", "AZ", "850"),
    ("Madison", "WI", "537"),
    ("Raleigh", "NC", "276"),
    ("Omaha", "NE", "681"),
    ("Boise", "ID", "837"),
];
pub(crate) const PROFILE_DOMAINS: &[&str] = &[
    "facebook.com",
    "google.com",
    "twitter.com",
    "linkedin.com",
    "yahoo.com",
    "apple.com",
];
pub(crate) const PHOTO_TYPES: &[&str] = &["original", "normal"];
pub(crate) const STATUS_NAMES: &[&str] =
    &["active", "verified", "pending", "suspended", "reactivated"];
pub(crate) const INTERNAL_NOTES: &[&str] = &[
    "Chargeback dispute opened by card issuer; keep an eye on refunds.",
    "Escalated to tier-2 support twice for account recovery.",
    "Flagged by fraud model v3 for login velocity; cleared after review.",
    "VIP support tier; handle complaints within one business day.",
    "Requested data export under privacy regulation; fulfilled.",
    "Possible duplicate of another account sharing the same phone number.",
    "No issues on file.",
    "Manual identity verification completed at a retail location.",
];
pub(crate) const ABOUT_SENTENCES: &[&str] = &[
    "I spend most weekends hiking the trails outside town with my dog.",
    "Coffee first, questions later, and never before the second cup.",
    "Currently learning to bake sourdough with mixed results so far.",
    "I work in logistics and think about shipping containers more than anyone should.",
    "Amateur photographer who mostly takes pictures of clouds and old buildings.",
    "Big fan of board games, especially the ones that take all afternoon.",
    "I volunteer at the local library teaching basic computer skills to seniors.",
    "Trying to visit every national park before I turn fifty.",
    "My garden produces far more tomatoes than my family can eat.",
    "I play bass in a band that has been rehearsing for a debut gig since last year.",
    "Long-distance cyclist with strong opinions about bicycle saddles.",
    "Reading my way through a list of classic novels one chapter at a time.",
    "I restore vintage radios and occasionally even get one to work again.",
    "Parent of two, owner of one cat, and keeper of far too many houseplants.",
    "Former teacher turned software tester, still grading everything I see.",
    "Learning Portuguese so I can finally talk with my grandmother in her language.",
];

pub(crate) fn generate_user(id: i64, next_element_id: &mut i64) -> Value {
    let mut rng = Lcg::seeded(id.unsigned_abs());
    let uuid = rng.uuid();
    // Spread creation over 2019-01-01 .. mid 2024, updates within a year after.
    let created_secs = 1_546_300_800 + i64::from(rng.below(173_000_000));
    let updated_secs = created_secs + i64::from(rng.below(31_536_000));
    let created = format_ts(created_secs, rng.below(1_000_000));
    let last_updated = format_ts(updated_secs, rng.below(1_000_000));
    let ts_between = |rng: &mut Lcg| {
        let span = u32::try_from(updated_secs - created_secs).unwrap_or(u32::MAX);
        format_ts(
            created_secs + i64::from(rng.below(span.max(1))),
            rng.below(1_000_000),
        )
    };

    let given = rng.pick(GIVEN_NAMES);
    let family = rng.pick(FAMILY_NAMES);
    let local = format!("{given}.{family}{id}")
        .to_ascii_lowercase()
        .replace('\'', "");
    let email = format!("{local}@example.com");
    let email_verified = if rng.chance(3, 4) {
        Value::from(format_ts(
            created_secs + i64::from(rng.below(86_400)),
            rng.below(1_000_000),
        ))
    } else {
        Value::Null
    };
    let middle = if rng.chance(2, 3) {
        Value::from(rng.pick(MIDDLE_NAMES))
    } else {
        Value::Null
    };
    // 1950-01-01 is 7305 days before the epoch; birthdays span ~55 years.
    let birthday =
        chrono::DateTime::from_timestamp((i64::from(rng.below(20_075)) - 7305) * 86_400, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
    let (city, state, zip_prefix) = CITIES
        .get(rng.below(CITIES.len() as u32) as usize)
        .copied()
        .unwrap_or(("Portland", "OR", "972"));
    let address2 = if rng.chance(1, 3) {
        Value::from(format!("Apt {}", 1 + rng.below(400)))
    } else {
        Value::Null
    };
    let mobile = format!("+1-555-{:03}-{:04}", rng.below(1000), rng.below(10_000));

    let profile_count = 1 + rng.below(3);
    let first_domain = rng.below(PROFILE_DOMAINS.len() as u32);
    let mut profiles = Vec::new();
    for i in 0..profile_count {
        let domain = PROFILE_DOMAINS
            .get(((first_domain + i) as usize) % PROFILE_DOMAINS.len())
            .copied()
            .unwrap_or("example.com");
        let verified = if rng.chance(1, 2) {
            Value::from(email.clone())
        } else {
            Value::Null
        };
        profiles.push(json!({
            "id": take_id(next_element_id),
            "domain": domain,
            "identifier": format!("https://{domain}/profile/{local}-{}", rng.below(1_000_000)),
            "displayName": format!("{given} {family}"),
            "verifiedEmail": verified,
        }));
    }
    let photo_count = 1 + rng.below(2);
    let photos: Vec<Value> = PHOTO_TYPES
        .iter()
        .take(photo_count as usize)
        .map(|kind| {
            json!({
                "id": take_id(next_element_id),
                "type": kind,
                "value": format!("https://photos.example.com/{uuid}/{kind}.jpg"),
            })
        })
        .collect();
    let status_count = rng.below(3);
    let mut statuses = Vec::new();
    for _ in 0..status_count {
        let status = rng.pick(STATUS_NAMES);
        statuses.push(json!({
            "id": take_id(next_element_id),
            "status": status,
            "statusCreated": ts_between(&mut rng),
        }));
    }

    let mut record = json!({
        "id": id,
        "uuid": uuid,
        "created": created,
        "lastUpdated": last_updated,
        "email": email,
        "emailVerified": email_verified,
        "givenName": given,
        "familyName": family,
        "middleName": middle,
        "displayName": format!("{given} {family}"),
        "birthday": birthday,
        "gender": rng.pick(GENDERS),
        "mobileNumber": mobile,
        "aboutMe": "",
        "primaryAddress": {
            "address1": format!("{} {}", 1 + rng.below(9899), rng.pick(STREETS)),
            "address2": address2,
            "city": city,
            "stateAbbreviation": state,
            "zip": format!("{zip_prefix}{:02}", rng.below(100)),
            "country": "US",
            "phone": format!("+1-555-{:03}-{:04}", rng.below(1000), rng.below(10_000)),
        },
        "consents": {
            "marketing": { "granted": rng.chance(1, 2), "updated": ts_between(&mut rng) },
            "analytics": { "granted": rng.chance(2, 3), "updated": ts_between(&mut rng) },
        },
        "profiles": profiles,
        "photos": photos,
        "statuses": statuses,
        "internal": {
            "riskScore": rng.below(100),
            "notes": rng.pick(INTERNAL_NOTES),
        },
    });

    let base_len = serde_json::to_string(&record).map(|s| s.len()).unwrap_or(0);
    let target = (RECORD_BYTES_MIN + rng.below(RECORD_BYTES_SPREAD)) as usize;
    let mut about = String::new();
    // The sentences need no JSON escaping, so byte length is serialised length.
    while base_len + about.len() < target {
        if !about.is_empty() {
            about.push(' ');
        }
        about.push_str(rng.pick(ABOUT_SENTENCES));
    }
    if let Some(slot) = record.get_mut("aboutMe") {
        *slot = Value::from(about);
    }
    record
}

pub(crate) fn take_id(next: &mut i64) -> i64 {
    let id = *next;
    *next += 1;
    id
}
