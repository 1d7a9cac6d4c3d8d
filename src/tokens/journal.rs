//! The bindings on disk: one JSON line per binding, appended before the
//! token is handed out, and rewritten whole (temporary file, fsync, rename)
//! at start and when it holds many lines no longer in force. A line holds
//! the token's keyed hash, never the token.
//!
//! A crash mid-append leaves at most a torn last line: it is skipped (and
//! logged) at the next start, and the rewrite drops it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::table::{Binding, ClientTag, Digest, Table, TokenKind};

/// One line of the file.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    /// The token's keyed hash (base64url).
    #[serde(rename = "d")]
    digest: String,
    #[serde(rename = "k")]
    kind: TokenKind,
    #[serde(rename = "c", borrow)]
    client_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none", borrow)]
    uuid: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "e")]
    expires_at: i64,
    #[serde(rename = "g")]
    client_tag: String,
}

/// One binding as a JSON line (also its value in etcd, `shared`).
pub(super) fn encode(digest: &Digest, b: &Binding) -> Result<Vec<u8>, String> {
    let line = Line {
        digest: URL_SAFE_NO_PAD.encode(digest),
        kind: b.kind,
        client_id: std::borrow::Cow::Borrowed(&b.client_id),
        uuid: b.uuid.as_deref().map(std::borrow::Cow::Borrowed),
        expires_at: b.expires_at,
        client_tag: URL_SAFE_NO_PAD.encode(b.client_tag),
    };
    let mut out = serde_json::to_vec(&line).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

pub(super) fn decode(text: &str) -> Option<(Digest, Binding)> {
    let line: Line<'_> = serde_json::from_str(text).ok()?;
    let digest: Digest = URL_SAFE_NO_PAD.decode(&line.digest).ok()?.try_into().ok()?;
    let client_tag: ClientTag = URL_SAFE_NO_PAD
        .decode(&line.client_tag)
        .ok()?
        .try_into()
        .ok()?;
    Some((
        digest,
        Binding {
            kind: line.kind,
            client_id: Arc::from(line.client_id.as_ref()),
            uuid: line.uuid.map(|u| Arc::from(u.as_ref())),
            expires_at: line.expires_at,
            client_tag,
        },
    ))
}

/// What [`Journal::open`] found in the file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub kept: usize,
    pub expired: usize,
    /// Lines that could not be read (a torn last line after a crash).
    pub unreadable: usize,
    /// Pushed out by the bound (a smaller `max_bindings` than before).
    pub over_capacity: usize,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Lines in the file: compaction is due when far more than are live.
    lines: usize,
    sync: bool,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

impl Journal {
    /// Reads the file (absent: no bindings yet), keeps what is still in
    /// force within `max`, and rewrites it compacted.
    pub fn open(
        path: &Path,
        sync: bool,
        max: usize,
        now: i64,
    ) -> Result<(Journal, Table, Loaded), String> {
        let mut table = Table::new(max);
        let mut loaded = Loaded::default();
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match decode(&line) {
                        Some((_, b)) if b.expires_at <= now => loaded.expired += 1,
                        Some((d, b)) => loaded.over_capacity += table.insert(d, b),
                        None => loaded.unreadable += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        loaded.kept = table.len();
        let file = open_append(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut journal = Journal {
            path: path.to_path_buf(),
            file,
            lines: 0,
            sync,
        };
        journal
            .rewrite(&table)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok((journal, table, loaded))
    }

    /// Appends one binding; synced to disk when `sync` is set.
    pub fn append(&mut self, digest: &Digest, binding: &Binding) -> std::io::Result<()> {
        let line = encode(digest, binding).map_err(std::io::Error::other)?;
        self.file.write_all(&line)?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.lines += 1;
        Ok(())
    }

    /// Whether the file holds many more lines than `live` bindings.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.lines > 2 * live + 1024
    }

    /// Replaces the file with exactly the bindings of `table`: written
    /// aside, synced, renamed over, so a crash leaves the old file or the
    /// new one, never a mix.
    pub fn rewrite(&mut self, table: &Table) -> std::io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut o = OpenOptions::new();
            o.create(true).write(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            let mut f = std::io::BufWriter::new(o.open(&tmp)?);
            for (d, b) in table.in_order() {
                f.write_all(&encode(d, b).map_err(std::io::Error::other)?)?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // The rename itself is durable once the directory is synced.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = open_append(&self.path)?;
        self.lines = table.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(client: &str, expires_at: i64) -> Binding {
        Binding {
            kind: TokenKind::Access,
            client_id: Arc::from(client),
            uuid: Some(Arc::from("u-1")),
            expires_at,
            client_tag: [7; 16],
        }
    }

    #[test]
    fn bindings_survive_a_reopen_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let (mut j, _, loaded) = Journal::open(&path, true, 10, 0).unwrap();
        assert_eq!(loaded, Loaded::default());
        j.append(&[1; 32], &binding("a", 100)).unwrap();
        j.append(&[2; 32], &binding("b", 5)).unwrap();
        drop(j);
        // A crash mid-append.
        let mut f = open_append(&path).unwrap();
        f.write_all(b"{\"d\":\"AQ").unwrap();
        drop(f);
        let (_, table, loaded) = Journal::open(&path, true, 10, 10).unwrap();
        assert_eq!(
            loaded,
            Loaded {
                kept: 1,
                expired: 1,
                unreadable: 1,
                over_capacity: 0
            }
        );
        assert_eq!(table.get(&[1; 32]), Some(&binding("a", 100)));
        // The rewrite left only what is in force.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn a_smaller_bound_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let (mut j, _, _) = Journal::open(&path, false, 10, 0).unwrap();
        for n in 0..5u8 {
            j.append(&[n; 32], &binding("a", 100)).unwrap();
        }
        drop(j);
        let (_, table, loaded) = Journal::open(&path, false, 2, 0).unwrap();
        assert_eq!(loaded.over_capacity, 3);
        assert!(table.get(&[4; 32]).is_some() && table.get(&[3; 32]).is_some());
        assert!(table.get(&[0; 32]).is_none());
    }
}
