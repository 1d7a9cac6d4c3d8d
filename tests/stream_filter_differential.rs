//! Differential tests: the streaming filter (`stream_filter`) against the
//! reference (`response_filter::filter_response`, a `serde_json::Value`
//! parse-project-serialise). For any body, schema and envelope both must accept
//! with the same JSON value (key order included) and the same removed count, or
//! both refuse with the same failure class. Bodies are generated as text, so
//! they carry escaped keys, odd number spellings, whitespace, duplicate keys,
//! lone surrogates, deep nesting and shape mismatches that a `Value` could not
//! express; mutated copies (truncated, bytes inserted, removed or replaced)
//! cover invalid input. Chunked feeding must match one-shot output byte for byte.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use recordgate::decide::routes::ResponseRecords;
use recordgate::filter::reference::filter_response;
use recordgate::filter::response::FilterFailure;
use recordgate::filter::response::{filter_response_bytes, project_bytes, StreamFilter};
use recordgate::schema::{AccessTree, AttrDef, AttrPath, EntityType};
use serde_json::{Map, Value};

/// splitmix64: the body generator draws from this so one proptest seed
/// describes a whole body.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `p` percent.
    fn pct(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "email",
    "givenName",
    "a",
    "b",
    "value",
    "na\u{ef}ve",
    "\u{43a}\u{43b}\u{44e}\u{447}",
    "quo\"te",
    "back\\slash",
    "tab\tname",
    "emoji\u{1f600}",
    "x y",
    "caf\u{e9}",
];
const SCALAR_KINDS: &[&str] = &[
    "string", "boolean", "integer", "decimal", "dateTime", "json",
];

fn def(name: &str, kind: &str, attr_defs: Option<Vec<AttrDef>>) -> AttrDef {
    AttrDef {
        name: name.to_owned(),
        kind: kind.to_owned(),
        attr_defs,
        extra: Map::new(),
    }
}

fn gen_defs(rng: &mut Rng, depth: u32) -> Vec<AttrDef> {
    let mut names: Vec<&str> = NAMES.to_vec();
    let count = 1 + rng.below(5);
    let mut defs = Vec::new();
    for _ in 0..count {
        let name = names.swap_remove(rng.below(names.len()));
        let roll = rng.below(5);
        let d = if depth > 0 && roll == 0 {
            def(name, "object", Some(gen_defs(rng, depth - 1)))
        } else if depth > 0 && roll == 1 {
            def(name, "plural", Some(gen_defs(rng, depth - 1)))
        } else {
            def(name, rng.pick(SCALAR_KINDS), None)
        };
        defs.push(d);
    }
    defs
}

/// Every grantable path (leaves and containers), plural element ids included.
fn all_paths(defs: &[AttrDef], prefix: &str, plural: bool, out: &mut Vec<String>) {
    for d in defs {
        let path = if prefix.is_empty() {
            d.name.clone()
        } else {
            format!("{prefix}.{}", d.name)
        };
        out.push(path.clone());
        if let Some(inner) = &d.attr_defs {
            all_paths(inner, &path, d.is_plural(), out);
        }
    }
    if plural {
        out.push(format!("{prefix}.id"));
    }
}

/// Writes JSON text with random spelling: escapes, whitespace, number forms.
/// `noise` (percent) controls how often something invalid or hostile is
/// slipped in.
struct Writer<'r> {
    rng: &'r mut Rng,
    out: Vec<u8>,
    noise: u64,
}

impl Writer<'_> {
    fn ws(&mut self) {
        if self.rng.pct(8) {
            let w = self.rng.pick(&[" ", "\n", "\t", "\r\n", "  "]);
            self.out.extend_from_slice(w.as_bytes());
        }
    }

    fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn string(&mut self, s: &str) {
        self.out.push(b'"');
        for c in s.chars() {
            let escape_anyway = self.rng.pct(10);
            match c {
                '"' => self.raw("\\\""),
                '\\' => self.raw("\\\\"),
                '\n' if !escape_anyway => self.raw("\\n"),
                '\t' if !escape_anyway => self.raw("\\t"),
                '/' if escape_anyway => self.raw("\\/"),
                c if (c as u32) < 0x20 || escape_anyway => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        let text = if self.rng.pct(50) {
                            format!("\\u{u:04x}")
                        } else {
                            format!("\\u{u:04X}")
                        };
                        self.raw(&text);
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    self.out
                        .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if self.rng.pct(self.noise) {
            let bad = self.rng.pick(&[
                "\\ud800",
                "\\udc00",
                "\\ud800\\u0041",
                "\\ud800x",
                "\\x",
                "\u{1}",
                "\\u12",
                "\\ud83d\\ude00",
            ]);
            self.raw(bad);
        }
        self.out.push(b'"');
    }

    fn number(&mut self) {
        const VALID: &[&str] = &[
            "0",
            "-0",
            "7",
            "-42",
            "3.25",
            "1e2",
            "1E+2",
            "-1.5e-3",
            "0.5",
            "123456789012345678901234567890",
            "1.7976931348623157e308",
            "1e308",
            "0.0000000001e-400",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "12345678901234567890.123",
            "9.999999999999999e307",
            "0e99999999999",
            "1e-99999999999",
            "4.9e-324",
        ];
        const INVALID: &[&str] = &[
            "1e400",
            "1.8e308",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "2e309",
            "1e99999999999",
            "-01",
            "1.e3",
            "0x10",
            "NaN",
            "Infinity",
        ];
        if self.rng.pct(self.noise) {
            let s = self.rng.pick(INVALID);
            self.raw(s);
        } else if self.rng.pct(30) {
            let s = self.rng.pick(VALID);
            self.raw(s);
        } else {
            let n = self.rng.next() as i64 >> self.rng.below(64);
            self.raw(&n.to_string());
        }
    }

    fn scalar(&mut self) {
        match self.rng.below(6) {
            0 | 1 => {
                let parts = [
                    "abc",
                    "na\u{ef}ve",
                    "\u{43a}\u{43b}",
                    "\u{1f600}",
                    "\"",
                    "\\",
                    "\n",
                    "\u{1}",
                    "/",
                    "x y",
                    "",
                ];
                let mut s = String::new();
                for _ in 0..self.rng.below(4) {
                    s.push_str(self.rng.pick(&parts));
                }
                self.string(&s);
            }
            2 => self.number(),
            3 => self.raw("true"),
            4 => self.raw("false"),
            _ => self.raw("null"),
        }
    }

    /// Any JSON value, nested up to `depth` containers.
    fn any(&mut self, depth: u32) {
        match self.rng.below(if depth == 0 { 1 } else { 4 }) {
            0 | 1 => self.scalar(),
            2 => {
                self.out.push(b'[');
                for i in 0..self.rng.below(4) {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.ws();
                    self.any(depth - 1);
                    self.ws();
                }
                self.out.push(b']');
            }
            _ => {
                let names: Vec<String> = (0..self.rng.below(4)).map(|i| format!("k{i}")).collect();
                self.object(&names, |w, _| w.any(depth - 1));
            }
        }
    }

    /// An object with `names` in order; sometimes a duplicate key is added
    /// (maybe spelled with escapes), and sometimes a trailing comma (noise).
    fn object<F: FnMut(&mut Self, usize)>(&mut self, names: &[String], mut value: F) {
        self.out.push(b'{');
        self.ws();
        let mut written = 0;
        for (i, name) in names.iter().enumerate() {
            if written > 0 {
                self.out.push(b',');
                self.ws();
            }
            self.string(name);
            self.ws();
            self.out.push(b':');
            self.ws();
            value(self, i);
            self.ws();
            written += 1;
        }
        if written > 0 && self.rng.pct(self.noise) {
            let name = names[self.rng.below(names.len())].clone();
            self.out.push(b',');
            self.string(&name);
            self.out.push(b':');
            self.scalar();
        }
        if written > 0 && self.rng.pct(self.noise / 2) {
            self.out.push(b',');
        }
        self.out.push(b'}');
    }

    /// Wraps whatever `inner` writes in a few arrays, now and then, to push
    /// against the depth limit.
    fn maybe_deep<F: FnOnce(&mut Self)>(&mut self, inner: F) {
        let wrap = if self.rng.pct(self.noise) {
            1 + self.rng.below(12)
        } else {
            0
        };
        for _ in 0..wrap {
            self.out.push(b'[');
        }
        inner(self);
        for _ in 0..wrap {
            self.out.push(b']');
        }
    }

    /// A record of `defs`: mostly conforming, with unknown keys, reserved
    /// keys, nulls and shape mismatches mixed in.
    fn record(&mut self, defs: &[AttrDef], depth: u32, top: bool, element: bool) {
        let mut fields: Vec<(String, Option<&AttrDef>)> = Vec::new();
        if top {
            for r in ["id", "uuid", "created", "lastUpdated"] {
                if self.rng.pct(70) {
                    fields.push((r.to_owned(), None));
                }
            }
        }
        if element && self.rng.pct(80) {
            fields.push(("id".to_owned(), None));
        }
        for d in defs {
            if self.rng.pct(80) {
                fields.push((d.name.clone(), Some(d)));
            }
        }
        if self.rng.pct(25) {
            fields.push((format!("unknown{}", self.rng.below(3)), None));
        }
        if !fields.is_empty() && self.rng.pct(20) {
            let i = self.rng.below(fields.len());
            let j = self.rng.below(fields.len());
            fields.swap(i, j);
        }
        let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
        self.object(&names, |w, i| match fields[i].1 {
            Some(d) => w.attribute(d, depth),
            None if fields[i].0 == "id" => w.number(),
            None => w.any(depth.min(2)),
        });
    }

    fn attribute(&mut self, d: &AttrDef, depth: u32) {
        let sub = d.attr_defs.as_deref().unwrap_or(&[]);
        let roll = self.rng.below(100);
        if d.is_object() {
            match roll {
                0..=74 => self.maybe_deep(|w| w.record(sub, depth + 1, false, false)),
                75..=84 => self.raw("null"),
                85..=92 => self.scalar(),
                _ => self.any(2),
            }
        } else if d.is_plural() {
            match roll {
                0..=79 => self.elements(sub, depth),
                80..=87 => self.raw("null"),
                88..=93 => self.scalar(),
                _ => self.any(2),
            }
        } else {
            match roll {
                0..=84 => self.scalar(),
                _ => self.any(2),
            }
        }
    }

    fn elements(&mut self, sub: &[AttrDef], depth: u32) {
        self.out.push(b'[');
        for i in 0..self.rng.below(4) {
            if i > 0 {
                self.out.push(b',');
            }
            self.ws();
            match self.rng.below(10) {
                0 => self.scalar(),
                1 => self.raw("null"),
                2 => self.elements(sub, depth),
                _ => self.record(sub, depth + 1, false, true),
            }
        }
        self.out.push(b']');
    }
}

/// The value at `path` in a record of `defs`, for `attribute_name` calls.
fn def_at<'a>(defs: &'a [AttrDef], path: &AttrPath) -> Option<&'a AttrDef> {
    let mut defs = defs;
    let mut found = None;
    for seg in path.segments() {
        let d = defs.iter().find(|d| &d.name == seg)?;
        defs = d.attr_defs.as_deref().unwrap_or(&[]);
        found = Some(d);
    }
    found
}

struct Case {
    body: Vec<u8>,
    records: ResponseRecords,
    tree: AccessTree,
    relative_to: Option<AttrPath>,
    max_depth: usize,
}

fn gen_case(seed: u64, noise: u64) -> Case {
    let mut rng = Rng(seed);
    let defs = gen_defs(&mut rng, 3);
    let ty = EntityType {
        name: "user".into(),
        attr_defs: defs.clone(),
    };
    let mut paths = Vec::new();
    all_paths(&defs, "", false, &mut paths);
    let granted: Vec<AttrPath> = if rng.pct(5) {
        Vec::new()
    } else {
        paths
            .iter()
            .filter(|_| rng.pct(30))
            .filter_map(|p| AttrPath::parse(p).ok())
            .collect()
    };
    let tree = match ty.read_tree(&granted) {
        Ok(t) if !rng.pct(5) => t,
        _ => ty.full_tree(),
    };
    let records = rng.pick(&[
        ResponseRecords::Result,
        ResponseRecords::Result,
        ResponseRecords::Results,
        ResponseRecords::Results,
        ResponseRecords::JsonBody,
        ResponseRecords::None,
    ]);
    let max_depth = rng.pick(&[3, 5, 8, 12, 64, 127, usize::MAX]);
    let mut relative_to = None;
    let mut w = Writer {
        rng: &mut rng,
        out: Vec::new(),
        noise,
    };
    w.ws();
    match records {
        ResponseRecords::Result | ResponseRecords::Results | ResponseRecords::None => {
            if w.rng.pct(noise) {
                // Not an envelope at all.
                w.any(2);
            } else {
                let mut keys: Vec<String> = vec!["stat".into()];
                let with_result = w.rng.pct(60);
                let with_results = !with_result || w.rng.pct(15);
                if with_result {
                    keys.push("result".into());
                }
                if with_results {
                    keys.push("results".into());
                    keys.push("result_count".into());
                }
                if w.rng.pct(50) {
                    let i = w.rng.below(keys.len());
                    keys.swap(0, i);
                }
                if with_result && records == ResponseRecords::Result && w.rng.pct(40) {
                    let p = paths[w.rng.below(paths.len())].clone();
                    let p = if w.rng.pct(30) { format!("{p}#2") } else { p };
                    relative_to = AttrPath::parse(&p).ok();
                }
                let rel = relative_to.clone();
                w.object(&keys, |w, i| match keys[i].as_str() {
                    "stat" => w.string("ok"),
                    "result_count" => w.number(),
                    "result" => match rel.as_ref().and_then(|p| def_at(&defs, p)) {
                        Some(d)
                            if d.is_plural() && rel.as_ref().is_some_and(|p| p.has_selector()) =>
                        {
                            let sub = d.attr_defs.as_deref().unwrap_or(&[]);
                            w.record(sub, 1, false, true)
                        }
                        Some(d) => w.attribute(d, 1),
                        None => w.record(&defs, 0, true, false),
                    },
                    _ => {
                        if w.rng.pct(noise) {
                            w.any(1);
                        } else {
                            w.out.push(b'[');
                            for j in 0..w.rng.below(5) {
                                if j > 0 {
                                    w.out.push(b',');
                                }
                                w.ws();
                                match w.rng.below(12) {
                                    0 => w.scalar(),
                                    1 => w.raw("null"),
                                    2 => w.any(2),
                                    _ => w.record(&defs, 0, true, false),
                                }
                            }
                            w.out.push(b']');
                        }
                    }
                });
            }
        }
        ResponseRecords::JsonBody => match w.rng.below(10) {
            0 => w.scalar(),
            1 => w.any(3),
            _ => w.record(&defs, 0, true, false),
        },
    }
    w.ws();
    if w.rng.pct(noise / 2) {
        let junk = w.rng.pick(&["x", "{}", ",", "]", "\u{0}", "null"]);
        w.raw(junk);
    }
    let body = w.out;
    Case {
        body,
        records,
        tree,
        relative_to,
        max_depth,
    }
}

/// Same JSON value with the same key order; numbers compared as f64 with a
/// relative tolerance, because the reference re-serialises long numbers
/// through f64 and serde_json's fast float parser does not always read its own
/// shortest spelling back to the same bits.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => p == q || ((p - q) / p.abs().max(q.abs())).abs() < 1e-14,
                _ => false,
            }
        }
        _ => a == b,
    }
}

type Outcome = Result<(Value, usize), FilterFailure>;

fn reference(c: &Case, body: &[u8]) -> Outcome {
    let f = filter_response(
        body,
        c.records,
        &c.tree,
        c.relative_to.as_ref(),
        c.max_depth,
    )?;
    let v = serde_json::from_slice(&f.body).map_err(|_| FilterFailure::Malformed)?;
    Ok((v, f.removed))
}

fn streaming(c: &Case, body: &[u8]) -> (Outcome, Option<Vec<u8>>) {
    match filter_response_bytes(
        body,
        c.records,
        &c.tree,
        c.relative_to.as_ref(),
        c.max_depth,
    ) {
        Ok(f) => match serde_json::from_slice(&f.body) {
            Ok(v) => (Ok((v, f.removed)), Some(f.body)),
            // Reported as a mismatch below: streaming output must be valid JSON.
            Err(_) => (Err(FilterFailure::UnexpectedShape), Some(f.body)),
        },
        Err(e) => (Err(e), None),
    }
}

fn check_agree(c: &Case, body: &[u8]) -> Result<(), TestCaseError> {
    let r = reference(c, body);
    let (s, raw) = streaming(c, body);
    let text = String::from_utf8_lossy(body);
    match (&r, &s) {
        (Ok((rv, rn)), Ok((sv, sn))) => {
            prop_assert!(
                same_value(rv, sv),
                "values differ\nbody: {text}\nreference: {rv}\nstreaming: {sv}"
            );
            prop_assert_eq!(rn, sn, "removed differs for body {}", text);
        }
        (Err(re), Err(se)) => prop_assert_eq!(re, se, "failure class differs for {}", text),
        _ => prop_assert!(
            false,
            "one refused, the other accepted\nbody: {text}\nreference: {r:?}\nstreaming: {s:?} {:?}",
            raw.map(|b| String::from_utf8_lossy(&b).into_owned())
        ),
    }
    Ok(())
}

/// Feeds `body` in the given chunk sizes (cycled); the output must equal the
/// one-shot output byte for byte, and errors must coincide.
fn chunked(c: &Case, body: &[u8], sizes: &[usize]) -> Result<(Vec<u8>, usize), ()> {
    let mut f = StreamFilter::for_response(c.records, &c.tree, c.relative_to.as_ref(), c.max_depth);
    let mut out = Vec::new();
    let mut rest = body;
    let mut k = 0;
    while !rest.is_empty() {
        let n = sizes[k % sizes.len()].clamp(1, rest.len());
        k += 1;
        let (chunk, tail) = rest.split_at(n);
        f.feed(chunk, &mut out).map_err(|_| ())?;
        rest = tail;
    }
    let removed = f.finish(&mut out).map_err(|_| ())?;
    Ok((out, removed))
}

fn one_shot(c: &Case, body: &[u8]) -> Result<(Vec<u8>, usize), ()> {
    filter_response_bytes(
        body,
        c.records,
        &c.tree,
        c.relative_to.as_ref(),
        c.max_depth,
    )
    .map(|f| (f.body, f.removed))
    .map_err(|_| ())
}

fn mutate(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = body.to_vec();
    let at = rng.below(b.len() + 1);
    match rng.below(4) {
        0 => b.truncate(at),
        1 => {
            let byte = rng.pick(&[
                b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'a', 0xff, 0xc3, 0x00,
                b' ', b'e', b'-', b'.', b'u', 0xed,
            ]);
            b.insert(at, byte);
        }
        2 if at < b.len() => {
            b.remove(at);
        }
        _ if at < b.len() => b[at] = rng.below(256) as u8,
        _ => b.push(b'}'),
    }
    b
}

proptest! {
    // PROPTEST_CASES raises the count for a soak run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(3000),
        ..ProptestConfig::default()
    })]

    /// Mostly well-formed bodies: the filters must produce the same records.
    #[test]
    fn same_output_as_reference(seed in any::<u64>()) {
        let c = gen_case(seed, 0);
        check_agree(&c, &c.body)?;
    }

    /// Hostile bodies: invalid escapes, lone surrogates, bad numbers,
    /// duplicates, trailing commas, deep nesting, garbage after the value.
    #[test]
    fn same_verdict_on_noisy_bodies(seed in any::<u64>(), noise in 1u64..25) {
        let c = gen_case(seed, noise);
        check_agree(&c, &c.body)?;
    }

    /// Truncated, extended and corrupted bodies.
    #[test]
    fn same_verdict_on_mutations(seed in any::<u64>(), noise in 0u64..10, mseed in any::<u64>()) {
        let c = gen_case(seed, noise);
        let mut rng = Rng(mseed);
        let mut body = c.body.clone();
        for _ in 0..=rng.below(3) {
            body = mutate(&body, &mut rng);
        }
        check_agree(&c, &body)?;
    }

    /// Random chunk boundaries give the one-shot output byte for byte.
    #[test]
    fn chunked_equals_one_shot(seed in any::<u64>(), noise in 0u64..10, sizes in prop::collection::vec(1usize..40, 1..6)) {
        let c = gen_case(seed, noise);
        prop_assert_eq!(chunked(&c, &c.body, &sizes), one_shot(&c, &c.body));
    }
}

fn fixed_case(body: &str, records: ResponseRecords, tree: AccessTree) -> Case {
    Case {
        body: body.as_bytes().to_vec(),
        records,
        tree,
        relative_to: None,
        max_depth: 64,
    }
}

fn user_tree(paths: &[&str]) -> AccessTree {
    let ty: EntityType = serde_json::from_value(serde_json::json!({
        "name": "user",
        "attr_defs": [
            {"name": "email", "type": "string"},
            {"name": "givenName", "type": "string"},
            {"name": "primaryAddress", "type": "object", "attr_defs": [
                {"name": "city", "type": "string"},
                {"name": "zip", "type": "string"}
            ]},
            {"name": "photos", "type": "plural", "attr_defs": [
                {"name": "value", "type": "string"},
                {"name": "caption", "type": "string"}
            ]}
        ]
    }))
    .expect("type");
    let paths: Vec<AttrPath> = paths
        .iter()
        .map(|p| AttrPath::parse(p).expect("path"))
        .collect();
    ty.read_tree(&paths).expect("tree")
}

/// Every split into two chunks, and one byte at a time, for a few bodies
/// covering escapes, surrogate pairs, multi-byte UTF-8, numbers at the end of
/// the stream and keys split anywhere.
#[test]
fn every_chunk_boundary_matches_one_shot() {
    let tree = user_tree(&["email", "primaryAddress.city", "photos.value"]);
    let bodies = [
        (
            r#"{"stat":"ok","results":[{"id":1,"em\u0061il":"a\"b\\c\u00e9\ud83d\ude00","password":"x","primaryAddress":{"city":"Z\u00fcrich","zip":"8000"},"photos":[{"id":2,"value":"v","caption":"c"},"junk",null,[{"value":1.5e3}]]},7,null]}"#,
            ResponseRecords::Results,
        ),
        (
            "{ \"result\" : { \"email\" : \"\u{e9}\u{1f600}x\" , \"givenName\" : -12.5E+3 , \"primaryAddress\" : null } , \"stat\" : \"ok\" }\n",
            ResponseRecords::Result,
        ),
        ("-1234.5e-7", ResponseRecords::None),
        ("{\"email\":\"k\u{444}\",\"photos\":[]}  ", ResponseRecords::JsonBody),
        // Refused: duplicate spelled with an escape, split at every point.
        (r#"{"results":[{"email":1,"em\u0061il":2}]}"#, ResponseRecords::Results),
        // Refused: lone surrogate inside a skipped attribute.
        (r#"{"results":[{"password":"\ud800"}]}"#, ResponseRecords::Results),
    ];
    for (body, records) in bodies {
        let c = fixed_case(body, records, tree.clone());
        let whole = one_shot(&c, &c.body);
        check_agree(&c, &c.body).expect("agrees with the reference");
        for at in 0..=c.body.len() {
            let sizes = [at, c.body.len()];
            assert_eq!(
                chunked(&c, &c.body, &sizes),
                whole,
                "split at {at} of {body}"
            );
        }
        assert_eq!(chunked(&c, &c.body, &[1]), whole, "bytewise {body}");
    }
}

#[test]
fn targeted_cases_agree_with_reference() {
    let tree = user_tree(&["email", "primaryAddress.city", "photos.value"]);
    let cases: &[(&str, ResponseRecords)] = &[
        (
            r#"{"result":{"em\u0061il":"a","p\u0061ssword":"h"}}"#,
            ResponseRecords::Result,
        ),
        (
            r#"{"result":{"email":"a","em\u0061il":"b"}}"#,
            ResponseRecords::Result,
        ),
        (r#"{"result":{"x":{"a":1,"a":2}}}"#, ResponseRecords::Result),
        (r#"{"result":"\udc00"}"#, ResponseRecords::Result),
        (
            r#"{"result":{"x":"\ud800\u0041"}}"#,
            ResponseRecords::Result,
        ),
        (r#"{"result":{"x":1e400}}"#, ResponseRecords::Result),
        (
            r#"{"result":{"x":1.7976931348623157e308}}"#,
            ResponseRecords::Result,
        ),
        (
            r#"{"result":{"x":1.7976931348623159e308}}"#,
            ResponseRecords::Result,
        ),
        (
            r#"{"result":{"x":17976931348623157000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000}}"#,
            ResponseRecords::Result,
        ),
        (
            r#"{"result":{"x":0e999999999999}}"#,
            ResponseRecords::Result,
        ),
        (r#"{"result":{}} x"#, ResponseRecords::Result),
        (r#"{"result":{},}"#, ResponseRecords::Result),
        (r#"[{"result":{}}]"#, ResponseRecords::Result),
        (r#"[1,"#, ResponseRecords::Result),
        (r#"{"results":{}}"#, ResponseRecords::Results),
        (
            r#"{"results":[1,"a",{"email":1,"zip":2},[{"email":2},3]]}"#,
            ResponseRecords::Results,
        ),
        (
            r#"{"results":[1,"a",{"email":1,"zip":2},[{"email":2},3]]}"#,
            ResponseRecords::Result,
        ),
        (
            r#"{"result":{"primaryAddress":"Oslo","photos":[{"value":"x"},"junk",null,5]}}"#,
            ResponseRecords::Result,
        ),
        (r#""just a string""#, ResponseRecords::JsonBody),
        ("", ResponseRecords::None),
        ("\u{feff}{}", ResponseRecords::None),
        ("{\"a\":\"\u{1}\"}", ResponseRecords::None),
        (r#"{"a":tru}"#, ResponseRecords::None),
        (r#"{"a":01}"#, ResponseRecords::None),
    ];
    for (body, records) in cases {
        let c = fixed_case(body, *records, tree.clone());
        check_agree(&c, &c.body).unwrap_or_else(|e| panic!("{body}: {e}"));
    }
    // Invalid UTF-8 inside a skipped attribute.
    let c = Case {
        body: b"{\"results\":[{\"password\":\"\xc3\"}]}".to_vec(),
        records: ResponseRecords::Results,
        tree: tree.clone(),
        relative_to: None,
        max_depth: 64,
    };
    check_agree(&c, &c.body).expect("agree");
    assert!(one_shot(&c, &c.body).is_err());
}

#[test]
fn relative_to_without_grant_nulls_result() {
    let tree = user_tree(&["email"]);
    for rel in ["primaryAddress", "photos#2", "email", "primaryAddress.city"] {
        let c = Case {
            body: br#"{"result":{"city":"Oslo"},"stat":"ok"}"#.to_vec(),
            records: ResponseRecords::Result,
            tree: tree.clone(),
            relative_to: AttrPath::parse(rel).ok(),
            max_depth: 64,
        };
        check_agree(&c, &c.body).expect("agree");
    }
}

#[test]
fn depth_limit_matches_reference() {
    let tree = user_tree(&["email"]);
    for depth in 0..8 {
        for n in 0..10 {
            let body = format!("{}{}", "[".repeat(n), "]".repeat(n));
            let c = Case {
                body: body.clone().into_bytes(),
                records: ResponseRecords::JsonBody,
                tree: tree.clone(),
                relative_to: None,
                max_depth: depth,
            };
            check_agree(&c, &c.body).unwrap_or_else(|e| panic!("{body} at {depth}: {e}"));
        }
    }
    let deep = "[".repeat(100_000);
    let mut out = Vec::new();
    assert!(project_bytes(deep.as_bytes(), &tree, usize::MAX, &mut out).is_err());
}

#[test]
fn large_objects_still_refuse_duplicates() {
    let tree = user_tree(&["email"]);
    let mut body = String::from("{\"results\":[{");
    for i in 0..5000 {
        body.push_str(&format!("\"k{i}\":{i},"));
    }
    body.push_str("\"k\\u0034999\":1}]}");
    let c = fixed_case(&body, ResponseRecords::Results, tree.clone());
    check_agree(&c, &c.body).expect("agree");
    assert!(one_shot(&c, &c.body).is_err());
    let ok = body.replace("\"k\\u0034999\":1", "\"email\":1");
    let c = fixed_case(&ok, ResponseRecords::Results, tree);
    check_agree(&c, &c.body).expect("agree");
    assert!(one_shot(&c, &c.body).is_ok());
}

/// Objects around and far past the fast path's key limit, with and without a
/// duplicate (near the start, in the middle, at the very end), as a granted
/// record, a removed attribute and a fully copied one: the fast path's bounded
/// duplicate scan and its hand-over to the state machine must not change a
/// verdict.
#[test]
fn wide_objects_and_late_duplicates_agree_with_reference() {
    let tree = user_tree(&["email", "primaryAddress", "photos.value"]);
    for n in [1usize, 2, 63, 64, 65, 66, 127, 128, 129, 300] {
        let names: Vec<String> = (0..n).map(|k| format!("k{k:03}x")).collect();
        let mut dups: Vec<Option<(usize, usize)>> = vec![None];
        for (from, to) in [
            (0, 1),
            (0, n - 1),
            (n / 2, n - 1),
            (n.saturating_sub(2), n - 1),
        ] {
            if from < to && to < n && !dups.contains(&Some((from, to))) {
                dups.push(Some((from, to)));
            }
        }
        for dup in dups {
            let mut keys = names.clone();
            if let Some((from, to)) = dup {
                keys[to] = keys[from].clone();
            }
            let members: Vec<String> = keys
                .iter()
                .map(|k| format!("\"{k}\":{}", k.len()))
                .collect();
            let wide = format!("{{{}}}", members.join(","));
            for body in [
                // The record itself is wide, under a partial grant.
                format!(
                    r#"{{"results":[{{"email":"e",{}}}]}}"#,
                    &wide[1..wide.len() - 1]
                ),
                // A removed attribute holds it.
                format!(r#"{{"results":[{{"email":"e","secret":{wide}}}]}}"#),
                // A fully granted attribute holds it.
                format!(r#"{{"results":[{{"email":"e","primaryAddress":{wide}}}]}}"#),
            ] {
                let c = fixed_case(&body, ResponseRecords::Results, tree.clone());
                check_agree(&c, &c.body).unwrap_or_else(|e| panic!("{n} keys, dup {dup:?}: {e}"));
                let (s, _) = streaming(&c, &c.body);
                assert_eq!(s.is_err(), dup.is_some(), "{n} keys, dup {dup:?}: {body}");
            }
        }
    }
}

/// Records that share their keys, then part of them, then differ: the fast
/// path reuses what it learnt from the previous record only while the keys
/// are the same, byte for byte. Among the cases: a duplicate after a matched
/// prefix and one past the learnt keys (refused), and a key that shares the
/// first and last eight bytes and the length of a granted one (removed, not
/// copied).
#[test]
fn records_of_one_shape_and_their_variants_agree_with_reference() {
    let ty: EntityType = serde_json::from_value(serde_json::json!({
        "name": "user",
        "attr_defs": [
            {"name": "email", "type": "string"},
            {"name": "givenName", "type": "string"},
            {"name": "preferredContactChannel", "type": "string"},
            {"name": "preferredZZZZZZZtChannel", "type": "string"},
            {"name": "primaryAddress", "type": "object", "attr_defs": [
                {"name": "city", "type": "string"},
                {"name": "zip", "type": "string"}
            ]}
        ]
    }))
    .expect("type");
    let paths: Vec<AttrPath> = ["email", "preferredContactChannel", "primaryAddress.city"]
        .iter()
        .map(|p| AttrPath::parse(p).expect("path"))
        .collect();
    let tree = ty.read_tree(&paths).expect("tree");
    let full = r#"{"email":"e","givenName":"g","preferredContactChannel":"p","primaryAddress":{"city":"c","zip":"z"},"id":1}"#;
    let variants = [
        (full, false),
        // A key of the same length, first and last eight bytes, not granted.
        (
            r#"{"email":"e","givenName":"g","preferreZZZZZZZtChannel":"x","primaryAddress":{"city":"c","zip":"z"},"id":1}"#,
            false,
        ),
        (r#"{"email":"e","givenName":"g"}"#, false),
        (r#"{"givenName":"g","email":"e","id":2}"#, false),
        (r#"{}"#, false),
        (
            r#"{"email":"e","givenName":"g","preferredContactChannel":"p","primaryAddress":{"zip":"z","city":"c"},"id":1,"extra":[1]}"#,
            false,
        ),
        // Duplicates after a matched prefix, and past the learnt keys.
        (r#"{"email":"e","givenName":"g","email":"x"}"#, true),
        (
            r#"{"email":"e","givenName":"g","preferredContactChannel":"p","primaryAddress":{"city":"c","zip":"z"},"id":1,"givenName":"y"}"#,
            true,
        ),
        (
            r#"{"email":"e","givenName":"g","preferredContactChannel":"p","primaryAddress":{"city":"c","city":"z"},"id":1}"#,
            true,
        ),
    ];
    for (variant, refused) in variants {
        for before in 0..3 {
            let mut records = vec![full; before];
            records.push(variant);
            records.push(full);
            let body = format!(r#"{{"results":[{}]}}"#, records.join(","));
            let c = fixed_case(&body, ResponseRecords::Results, tree.clone());
            check_agree(&c, &c.body).unwrap_or_else(|e| panic!("{body}: {e}"));
            let (s, raw) = streaming(&c, &c.body);
            assert_eq!(s.is_err(), refused, "{body}");
            if let Some(raw) = raw {
                let text = String::from_utf8_lossy(&raw);
                assert!(
                    !text.contains("ZZZZ") && !text.contains("givenName"),
                    "{text}"
                );
            }
            let whole = one_shot(&c, &c.body);
            for size in [7, 64, 100, 333] {
                assert_eq!(
                    chunked(&c, &c.body, &[size]),
                    whole,
                    "chunks of {size}: {body}"
                );
            }
        }
    }
}

/// More nested objects under partial grants than the fast path keeps shapes
/// for, so nested objects take over the record's entry while the record is
/// still being matched against it: the record's verdicts, a duplicate after
/// them among them, must not change.
#[test]
fn more_nested_shapes_than_kept_agree_with_reference() {
    let nested: Vec<serde_json::Value> = (0..12)
        .map(|k| {
            serde_json::json!({"name": format!("o{k}"), "type": "object", "attr_defs": [
                {"name": "a", "type": "string"}, {"name": "b", "type": "string"}
            ]})
        })
        .collect();
    let mut defs = vec![serde_json::json!({"name": "id", "type": "integer"})];
    defs.extend(nested);
    let ty: EntityType =
        serde_json::from_value(serde_json::json!({"name": "user", "attr_defs": defs}))
            .expect("type");
    let paths: Vec<AttrPath> = (0..12)
        .map(|k| AttrPath::parse(&format!("o{k}.a")).expect("path"))
        .chain([AttrPath::parse("id").expect("path")])
        .collect();
    let tree = ty.read_tree(&paths).expect("tree");
    let record = |extra: &str| {
        let members: Vec<String> = (0..12)
            .map(|k| format!(r#""o{k}":{{"a":"x{k}","b":"y{k}"}}"#))
            .collect();
        format!(r#"{{"id":1,{}{extra}}}"#, members.join(","))
    };
    for (extra, refused) in [
        ("", false),
        (r#","id":2"#, true),
        (r#","o3":{"a":"z"}"#, true),
        (r#","secret":1"#, false),
    ] {
        let records = [record(""), record(""), record(extra), record("")];
        let body = format!(r#"{{"results":[{}]}}"#, records.join(","));
        let c = fixed_case(&body, ResponseRecords::Results, tree.clone());
        check_agree(&c, &c.body).unwrap_or_else(|e| panic!("{extra}: {e}"));
        let (s, _) = streaming(&c, &c.body);
        assert_eq!(s.is_err(), refused, "{extra}");
    }
}
