//! The `filter` and `sort_on` languages of the sample API.

use super::*;

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn accepts(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cond {
    IsNull(Vec<String>),
    NotNull(Vec<String>),
    Cmp(Vec<String>, CmpOp, Lit),
}

/// Disjunction of conjunctions: `and` binds tighter than `or`, as in Capture.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Filter {
    pub(crate) any_of: Vec<Vec<Cond>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Op(CmpOp),
}

pub(crate) fn tokenize(input: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string literal".to_string()),
                    Some('\\') => match chars.next() {
                        Some(escaped) => s.push(escaped),
                        None => return Err("unterminated string literal".to_string()),
                    },
                    // SQL-style doubled quote.
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    Some('\'') => break,
                    Some(other) => s.push(other),
                }
            }
            toks.push(Tok::Str(s));
        } else if matches!(c, '=' | '!' | '<' | '>') {
            chars.next();
            let op = match c {
                '=' => CmpOp::Eq,
                '!' if chars.next_if_eq(&'=').is_some() => CmpOp::Ne,
                '<' if chars.next_if_eq(&'=').is_some() => CmpOp::Le,
                '<' if chars.next_if_eq(&'>').is_some() => CmpOp::Ne,
                '<' => CmpOp::Lt,
                '>' if chars.next_if_eq(&'=').is_some() => CmpOp::Ge,
                '>' => CmpOp::Gt,
                _ => return Err("the ! (not) operator is not supported".to_string()),
            };
            toks.push(Tok::Op(op));
        } else if c.is_ascii_digit() || c == '-' {
            let mut s = String::new();
            while let Some(&d) = chars.peek() {
                let exponent_sign = (d == '-' || d == '+') && s.ends_with(['e', 'E']);
                if d.is_ascii_digit()
                    || d == '.'
                    || d == 'e'
                    || d == 'E'
                    || exponent_sign
                    || (d == '-' && s.is_empty())
                {
                    s.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            let n = s
                .parse::<f64>()
                .map_err(|_| format!("invalid number {s}"))?;
            toks.push(Tok::Num(n));
        } else if c.is_alphabetic() || c == '_' || c == '/' {
            let mut s = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_alphanumeric() || matches!(d, '_' | '.' | '/' | '#') {
                    s.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            toks.push(Tok::Word(s));
        } else {
            return Err(format!("unexpected character '{c}'"));
        }
    }
    Ok(toks)
}

pub(crate) fn is_word(tok: Option<&Tok>, word: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(word))
}

pub(crate) fn describe(tok: Option<&Tok>) -> String {
    match tok {
        None => "end of filter".to_string(),
        Some(Tok::Word(w)) => format!("'{w}'"),
        Some(Tok::Str(s)) => format!("string '{s}'"),
        Some(Tok::Num(n)) => format!("number {n}"),
        Some(Tok::Op(op)) => format!("operator {op:?}"),
    }
}

pub(crate) fn parse_filter(input: &str) -> Result<Filter, String> {
    let toks = tokenize(input)?;
    if toks.is_empty() {
        return Err("empty filter".to_string());
    }
    let mut pos = 0;
    let mut any_of = vec![Vec::new()];
    loop {
        let cond = parse_cond(&toks, &mut pos)?;
        if let Some(group) = any_of.last_mut() {
            group.push(cond);
        }
        let tok = toks.get(pos);
        pos += 1;
        if tok.is_none() {
            break;
        } else if is_word(tok, "and") {
            continue;
        } else if is_word(tok, "or") {
            any_of.push(Vec::new());
        } else {
            return Err(format!("expected and/or but found {}", describe(tok)));
        }
    }
    Ok(Filter { any_of })
}

pub(crate) fn parse_cond(toks: &[Tok], pos: &mut usize) -> Result<Cond, String> {
    let tok = toks.get(*pos);
    *pos += 1;
    let path = match tok {
        Some(Tok::Word(w)) if w.eq_ignore_ascii_case("not") => {
            return Err("the not operator is not supported".to_string())
        }
        Some(Tok::Word(w)) => match scalar_path(w, true) {
            Ok(path) => path,
            Err(PathProblem::Unknown) => return Err(format!("Unknown attribute {w}")),
            Err(PathProblem::Invalid(reason)) => return Err(reason),
        },
        other => {
            return Err(format!(
                "expected an attribute but found {}",
                describe(other)
            ))
        }
    };
    let tok = toks.get(*pos);
    *pos += 1;
    match tok {
        _ if is_word(tok, "is") => {
            let negated = is_word(toks.get(*pos), "not");
            if negated {
                *pos += 1;
            }
            let tok = toks.get(*pos);
            *pos += 1;
            if !is_word(tok, "null") {
                return Err(format!("expected null but found {}", describe(tok)));
            }
            Ok(if negated {
                Cond::NotNull(path)
            } else {
                Cond::IsNull(path)
            })
        }
        Some(Tok::Op(op)) => {
            let tok = toks.get(*pos);
            *pos += 1;
            let lit = match tok {
                Some(Tok::Str(s)) => Lit::Str(s.clone()),
                Some(Tok::Num(n)) => Lit::Num(*n),
                _ if is_word(tok, "true") => Lit::Bool(true),
                _ if is_word(tok, "false") => Lit::Bool(false),
                _ if is_word(tok, "null") => {
                    return Err("compare with null using is null / is not null".to_string())
                }
                other => return Err(format!("expected a value but found {}", describe(other))),
            };
            Ok(Cond::Cmp(path, *op, lit))
        }
        _ if is_word(tok, "contains") => Err("the contains operator is not supported".to_string()),
        other => Err(format!(
            "expected an operator but found {}",
            describe(other)
        )),
    }
}

pub(crate) fn compare_lit(v: &Value, lit: &Lit) -> Option<Ordering> {
    match (v, lit) {
        (Value::Number(n), Lit::Num(l)) => n.as_f64()?.partial_cmp(l),
        (Value::String(s), Lit::Str(l)) => Some(s.as_str().cmp(l.as_str())),
        (Value::Bool(b), Lit::Bool(l)) => Some(b.cmp(l)),
        _ => None,
    }
}

impl Cond {
    pub(crate) fn matches(&self, record: &Value) -> bool {
        match self {
            Cond::IsNull(p) => !any_value(record, p, &mut |v| !v.is_null()),
            Cond::NotNull(p) => any_value(record, p, &mut |v| !v.is_null()),
            Cond::Cmp(p, op, lit) => any_value(record, p, &mut |v| {
                compare_lit(v, lit).is_some_and(|o| op.accepts(o))
            }),
        }
    }
}

impl Filter {
    pub(crate) fn matches(&self, record: &Value) -> bool {
        self.any_of
            .iter()
            .any(|group| group.iter().all(|c| c.matches(record)))
    }
}

pub(crate) fn parse_filter_param(params: &Params) -> ApiResult<Option<Filter>> {
    params
        .get("filter")
        .map(|raw| parse_filter(raw).map_err(|reason| ApiError::invalid("filter", reason)))
        .transpose()
}

// ---------------------------------------------------------------------------
// Sorting
// ---------------------------------------------------------------------------

pub(crate) fn parse_sort(params: &Params) -> ApiResult<Vec<(Vec<String>, bool)>> {
    let Some(value) = parse_json_param(params, "sort_on")? else {
        return Ok(Vec::new());
    };
    let shape = || ApiError::invalid("sort_on", "expected a JSON array of attribute names");
    let Value::Array(items) = value else {
        return Err(shape());
    };
    items
        .iter()
        .map(|item| {
            let raw = item.as_str().ok_or_else(shape)?;
            let (name, descending) = match raw.strip_prefix('-') {
                Some(rest) => (rest, true),
                None => (raw, false),
            };
            match scalar_path(name, false) {
                Ok(path) => Ok((path, descending)),
                Err(PathProblem::Unknown) => Err(ApiError::unknown_attribute(name, "sort_on")),
                Err(PathProblem::Invalid(reason)) => Err(ApiError::invalid("sort_on", reason)),
            }
        })
        .collect()
}

/// Nulls sort last ascending (first descending), as in PostgreSQL.
pub(crate) fn cmp_values(a: &Value, b: &Value) -> Ordering {
    pub(crate) fn rank(v: &Value) -> u8 {
        match v {
            Value::Bool(_) => 0,
            Value::Number(_) => 1,
            Value::String(_) => 2,
            Value::Array(_) | Value::Object(_) => 3,
            Value::Null => 4,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}
