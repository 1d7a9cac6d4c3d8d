//! `recordgate policy import` and `export`.
use std::path::Path;

use crate::config::settings::Settings;
use crate::config::store::EtcdSettings;

fn etcd_settings(settings: &Settings) -> Result<&EtcdSettings, String> {
    settings
        .policy_store
        .etcd
        .as_ref()
        .ok_or_else(|| "policy_store.etcd is not set: there is no etcd store to use".to_string())
}

fn connect(settings: &Settings) -> Result<super::Etcd, String> {
    let base = settings.policy.parent().unwrap_or(Path::new("."));
    super::Etcd::connect(etcd_settings(settings)?, base)
}

/// Validates `file` as `serve` would, then writes it to etcd: keys in
/// batches within etcd's limits, the guard last, so no replica adopts
/// a half import. Returns a summary line.
/// With `if_empty`, nothing is written when etcd holds a policy already.
pub fn import(settings: &Settings, file: &Path, if_empty: bool) -> Result<String, String> {
    let snap = crate::policy::store::load_policy_file(file, 1).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let etcd = connect(settings)?;
    let id = super::layout::change_id("import");
    let entry = serde_json::json!({
        "ts": chrono::Utc::now().to_rfc3339(),
        "request_id": id,
        "caller": "recordgate policy import",
        "endpoint": "policy import",
        "target": null,
        "file": file.display().to_string(),
        "hash": snap.hash,
        "clients": snap.clients.len(),
        "entity_types": snap.entity_types.len(),
    });
    let revision = match etcd.import(&snap.source, (&id, entry.to_string()), if_empty)? {
        super::Imported::Written(revision) => revision,
        super::Imported::AlreadyThere(revision) => {
            return Ok(format!(
                "etcd holds a policy already (its guard at revision {revision}): {} not imported (--if-empty)",
                file.display()
            ))
        }
    };
    Ok(format!(
        "imported {} into etcd at revision {revision}: {} clients, {} entity types, hash {}",
        file.display(),
        snap.clients.len(),
        snap.entity_types.len(),
        snap.hash
    ))
}

/// The policy etcd holds, as YAML for review; refused when it is not
/// whole (a change half written, a key that cannot be read).
pub fn export(settings: &Settings) -> Result<String, String> {
    let etcd = connect(settings)?;
    let (mirror, revision) = etcd.read_all()?;
    let (policy, hash) = mirror.whole()?;
    let yaml = serde_yaml::to_string(policy).map_err(|e| e.to_string())?;
    Ok(format!(
        "# recordgate policy exported from etcd at revision {revision}, hash {hash}\n{yaml}"
    ))
}
