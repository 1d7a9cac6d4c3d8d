//! The source tree's shape, checked: folders by concern with no import
//! cycles between files or between folders, and no file over 800 lines.
//! A reference is any `crate::…` or `super::…` path in a file's code (not
//! its comments), resolved to the file that defines the module it names.

// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/decide/routes.rs` -> `[decide, routes]`,
/// `src/decide/mod.rs` -> `[decide]`, `src/lib.rs` -> `[]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// The file that defines the longest existing prefix of `module`.
fn file_of(module: &[String]) -> Option<PathBuf> {
    for n in (1..=module.len()).rev() {
        let base = module[..n].iter().fold(src(), |p, s| p.join(s));
        let as_file = base.with_extension("rs");
        if as_file.is_file() {
            return Some(as_file);
        }
        let as_dir = base.join("mod.rs");
        if as_dir.is_file() {
            return Some(as_dir);
        }
    }
    None
}

/// Paths like `crate::a::b` and `super::super::c` in the code of `text`.
/// A `super` inside an inline `mod x { … }` first climbs out of that block:
/// such references come back with the block depth taken off, and not at all
/// when they stay inside the file.
fn references(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    // Brace depths at which the open inline modules started.
    let mut inline: Vec<usize> = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let nested = inline.len();
        for (supers, segs) in line_references(code) {
            if supers == 0 {
                out.push((0, segs));
            } else if supers > nested {
                out.push((supers - nested, segs));
            }
        }
        let trimmed = code.trim_start();
        let opens_inline = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ")
            .starts_with("mod ")
            && trimmed.trim_end().ends_with('{');
        if opens_inline {
            inline.push(depth);
        }
        for b in code.bytes() {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if inline.last() == Some(&depth) {
                        inline.pop();
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn line_references(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let starts_word = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        if !starts_word || !(rest.starts_with("crate::") || rest.starts_with("super::")) {
            i += 1;
            continue;
        }
        let mut supers = 0;
        let mut segs = Vec::new();
        for seg in rest.split("::") {
            let name: String = seg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "crate" && segs.is_empty() && supers == 0 {
                // The root.
            } else if name == "super" && segs.is_empty() {
                supers += 1;
            } else if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                segs.push(name.clone());
            } else {
                break;
            }
            if name.len() != seg.len() {
                break;
            }
        }
        out.push((supers, segs));
        i += 5;
    }
    out
}

fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let whole = std::fs::read_to_string(file).unwrap();
        // An inline test module's `super` is the file itself: it is not
        // part of the file's dependencies.
        let text = match whole.find("#[cfg(test)]\nmod tests {") {
            Some(at) => &whole[..at],
            None => &whole[..],
        };
        let here = module_of(file);
        let is_mod_file = file.file_name().is_some_and(|n| n == "mod.rs");
        let set = edges.entry(file.clone()).or_default();
        for (supers, segs) in references(text) {
            let mut module = if supers == 0 {
                Vec::new()
            } else {
                // `super` in a/b.rs is `a`; in a/b/mod.rs it is `a` as well
                // (the module is `a::b`, its parent `a`).
                let mut m = here.clone();
                for _ in 0..supers {
                    m.pop();
                }
                m
            };
            module.extend(segs);
            if module.is_empty() {
                continue;
            }
            if let Some(target) = file_of(&module) {
                if &target != file {
                    set.insert(target);
                }
            }
        }
        let _ = is_mod_file;
        // Paths through a child module declared here (`mod x;` then `x::y`)
        // are references too.
        let children: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l
                    .strip_prefix("pub ")
                    .or(l.strip_prefix("pub(crate) "))
                    .unwrap_or(l);
                l.strip_prefix("mod ")?
                    .strip_suffix(';')
                    .map(str::to_string)
            })
            .collect();
        for child in children {
            if child == "tests" {
                continue;
            }
            let needle = format!("{child}::");
            let used = text.lines().any(|line| {
                let code = line.split("//").next().unwrap_or("");
                code.match_indices(&needle).any(|(i, _)| {
                    i == 0 || {
                        let b = code.as_bytes()[i - 1];
                        !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')
                    }
                })
            });
            let mut module = here.clone();
            module.push(child);
            if let (true, Some(target)) = (used, file_of(&module)) {
                if &target != file {
                    set.insert(target);
                }
            }
        }
    }
    edges
}

/// A cycle in `edges`, if there is one, as the list of its nodes.
fn find_cycle<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<N: Ord + Clone>(
        n: &N,
        edges: &BTreeMap<N, BTreeSet<N>>,
        marks: &mut BTreeMap<N, Mark>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[at..].to_vec();
                cycle.push(n.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(n.clone(), Mark::Open);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(n.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in edges.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, edges, &mut marks, &mut stack) {
            return Some(c);
        }
    }
    None
}

fn rel(p: &Path) -> String {
    p.strip_prefix(src()).unwrap().display().to_string()
}

#[test]
fn no_import_cycles_between_files() {
    let edges = graph();
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(|p| rel(p)).collect();
        panic!("import cycle between files: {}", names.join(" -> "));
    }
}

#[test]
fn no_import_cycles_between_folders() {
    // A folder is a directory under src/; a file at the top is its own unit.
    let unit = |p: &Path| -> String {
        let r = p.strip_prefix(src()).unwrap();
        let mut parts = r.iter();
        let first = parts.next().unwrap().to_string_lossy().into_owned();
        first.trim_end_matches(".rs").to_string()
    };
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph() {
        let f = unit(&from);
        let set = folders.entry(f.clone()).or_default();
        for to in tos {
            let t = unit(&to);
            if t != f && t != "lib" {
                set.insert(t);
            }
        }
    }
    if let Some(cycle) = find_cycle(&folders) {
        panic!("import cycle between folders: {}", cycle.join(" -> "));
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", rel(f)))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    edges.entry("a").or_default().insert("b");
    edges.entry("b").or_default().insert("c");
    edges.entry("c").or_default().insert("a");
    assert!(find_cycle(&edges).is_some());
    edges.get_mut("c").unwrap().clear();
    assert!(find_cycle(&edges).is_none());
    let refs = references(
        "use crate::decide::routes::Route; let x = super::super::tree::AccessTree::all();",
    );
    assert_eq!(
        refs[0],
        (0, vec!["decide".to_string(), "routes".to_string()])
    );
    assert_eq!(refs[1], (2, vec!["tree".to_string()]));
}
