//! Validates a `PolicyFile` and compiles it into a `Snapshot`: plain immutable
//! data (feature bit sets, CIDR range tables, attribute trees) that requests
//! only read. Every problem is collected, located by key, and reported at once.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::features::{Feature, FeatureSet};
use super::model::{AccessSchemasDef, ClientDef, Enforcement, PolicyFile, WriteViolationMode};
use crate::cidr::{parse_cidr, CidrSet};
use crate::config::settings::ConfigError;
use crate::rate::{Bucket, RateLimit};
use crate::schema::{AccessTree, AttrPath, EntityType};

pub struct Snapshot {
    /// Increases by one with every accepted change in this process.
    pub version: u64,
    /// SHA-256 of the canonical policy, to compare with what is in Git.
    pub hash: String,
    /// Shared with the next version for every client whose definition it
    /// did not change ([`compile_from`]).
    pub clients: HashMap<String, Arc<Client>>,
    pub entity_types: Arc<HashMap<String, CompiledEntityType>>,
    /// The policy this snapshot was compiled from, for the management API.
    pub source: PolicyFile,
    /// How many clients are in shadow mode (`enforcement: shadow`).
    pub shadow_clients: usize,
}

pub struct CompiledEntityType {
    pub def: EntityType,
    pub full: AccessTree,
}

pub struct Client {
    pub id: String,
    secret: Vec<u8>,
    /// A replaced secret still accepted until the unix time given.
    previous_secret: Option<(Vec<u8>, i64)>,
    pub features: FeatureSet,
    /// `None` allows every address.
    pub whitelist: Option<CidrSet>,
    pub on_write_violation: WriteViolationMode,
    /// `enforcement: shadow`: decided and reported, never enforced.
    pub shadow_mode: bool,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    /// Shared by every client with the same `access_schemas`.
    pub schemas: Arc<HashMap<String, ClientSchemas>>,
    /// The client certificate subject commonName it must present
    /// (`decide::client_certificate`).
    pub tls_client_subject: Option<String>,
    /// The client's own limit; `None`: the settings' default applies.
    pub rate_limit: Option<RateLimit>,
    /// The client's bucket: live state, not policy. The store hands the
    /// previous version's bucket on ([`Snapshot::keep_rate_buckets`]), so a
    /// reload neither refills nor resets what a client has used.
    pub rate_bucket: Arc<Bucket>,
}

impl Client {
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The previous secret while its grace period (`reset_secret`) lasts.
    pub fn previous_secret(&self, now_secs: i64) -> Option<&[u8]> {
        match &self.previous_secret {
            Some((s, expires)) if now_secs < *expires => Some(s),
            _ => None,
        }
    }
}

impl Snapshot {
    /// Gives each client the bucket it had in `previous` (matched by id), so
    /// a new policy version carries on the limits' state; a new client
    /// starts with a full bucket. Called by the store before the swap: calls
    /// still deciding on `previous` share the same buckets meanwhile.
    pub fn keep_rate_buckets(&mut self, previous: &Snapshot) {
        for (id, client) in &mut self.clients {
            // A client shared with `previous` has its bucket already.
            if let (Some(client), Some(old)) = (Arc::get_mut(client), previous.clients.get(id)) {
                client.rate_bucket = old.rate_bucket.clone();
            }
        }
    }
}

/// One client's grants on one entity type; `None` means no schema (full access).
#[derive(Default)]
pub struct ClientSchemas {
    pub read: Option<Arc<AccessTree>>,
    pub write: Option<Arc<AccessTree>>,
    pub read_with_token: Option<Arc<AccessTree>>,
    pub write_with_token: Option<Arc<AccessTree>>,
    /// Evaluated next to the enforced read (or read-with-token) schema and
    /// never enforced; `None`: no shadow.
    pub shadow_read: Option<Arc<AccessTree>>,
    /// The same for writes.
    pub shadow_write: Option<Arc<AccessTree>>,
    /// `write: []`: the client may not write this entity type at all.
    pub read_only: bool,
    /// The same with a user token: `write_with_token: []`, or no
    /// `write_with_token` and `write: []`.
    pub read_only_with_token: bool,
}

/// Where secret references (`file:`) are resolved from.
pub struct CompileContext<'a> {
    pub file: &'a Path,
    pub version: u64,
}

pub fn compile(policy: PolicyFile, ctx: &CompileContext<'_>) -> Result<Snapshot, Vec<ConfigError>> {
    compile_inner(policy, ctx, None)
}

/// [`compile`] for a caller that already computed [`policy_hash`] (the file
/// reload, which compares it with the running policy first).
pub fn compile_hashed(
    policy: PolicyFile,
    ctx: &CompileContext<'_>,
    hash: String,
) -> Result<Snapshot, Vec<ConfigError>> {
    compile_inner(policy, ctx, Some(hash))
}

/// [`compile`] of `next`, reusing what `previous` compiled: a client whose
/// definition is unchanged keeps its compiled form (and its rate bucket),
/// only the others are compiled. A management change touches one client,
/// so with 100,000 clients this is the difference between compiling one
/// and compiling all. Changed entity types change every schema: then
/// everything is compiled. Compiling is a function of the definition, the
/// entity types and the secrets it names, so the result is the full
/// compile's; a secret file changed on disk is read again by a full reload
/// (SIGHUP), as before.
pub fn compile_from(
    previous: &Snapshot,
    next: PolicyFile,
    ctx: &CompileContext<'_>,
    known_hash: Option<String>,
) -> Result<Snapshot, Vec<ConfigError>> {
    if next.entity_types != previous.source.entity_types {
        let mut snap = compile_inner(next, ctx, known_hash)?;
        snap.keep_rate_buckets(previous);
        return Ok(snap);
    }
    let mut errors = Vec::new();
    let mut err = error_sink(ctx, &mut errors);
    let base_dir = ctx.file.parent().unwrap_or(Path::new("."));
    let (hash, clients) = hashed(&next, known_hash, &mut err, |err| {
        let mut clients = HashMap::with_capacity(next.clients.len());
        let mut caches = Caches::default();
        for (id, def) in &next.clients {
            let old = previous.clients.get(id);
            if let (Some(old), Some(old_def)) = (old, previous.source.clients.get(id)) {
                if Arc::ptr_eq(old_def, def) || old_def == def {
                    clients.insert(id.clone(), old.clone());
                    continue;
                }
            }
            let mut client = compile_client(
                id,
                def,
                &next,
                &previous.entity_types,
                base_dir,
                &mut caches,
                err,
            );
            if let Some(old) = old {
                client.rate_bucket = old.rate_bucket.clone();
            }
            clients.insert(id.clone(), Arc::new(client));
        }
        clients
    });
    drop(err);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Snapshot {
        version: ctx.version,
        hash,
        shadow_clients: clients.values().filter(|c| c.shadow_mode).count(),
        clients,
        entity_types: previous.entity_types.clone(),
        source: next,
    })
}

/// Collects errors located in the policy file of `ctx`.
fn error_sink<'e>(
    ctx: &CompileContext<'_>,
    errors: &'e mut Vec<ConfigError>,
) -> impl FnMut(String, String) + 'e {
    let file = ctx.file.display().to_string();
    move |key: String, message: String| {
        errors.push(ConfigError {
            file: file.clone(),
            key,
            message,
        })
    }
}

/// Runs `work` while the policy's canonical hash (a serialisation of the
/// whole policy) is computed on a second thread, so that it overlaps the
/// compilation instead of adding to it; `known_hash` skips it. Without its
/// hash a changed policy could look unchanged and a reload be skipped: no
/// hash is an error.
fn hashed<T: Send, E: FnMut(String, String) + Send>(
    policy: &PolicyFile,
    known_hash: Option<String>,
    err: &mut E,
    work: impl FnOnce(&mut E) -> T + Send,
) -> (String, T) {
    if let Some(hash) = known_hash {
        return (hash, work(err));
    }
    std::thread::scope(|s| {
        let hash = s.spawn(|| policy_hash(policy));
        let done = work(err);
        let hash = match hash.join() {
            Ok(Ok(hash)) => hash,
            Ok(Err(why)) => {
                err(String::new(), format!("{why}; the policy was not loaded"));
                String::new()
            }
            Err(_) => {
                err(
                    String::new(),
                    "the policy's hash could not be computed; the policy was not loaded".into(),
                );
                String::new()
            }
        };
        (hash, done)
    })
}

fn compile_inner(
    policy: PolicyFile,
    ctx: &CompileContext<'_>,
    known_hash: Option<String>,
) -> Result<Snapshot, Vec<ConfigError>> {
    let base_dir = ctx.file.parent().unwrap_or(Path::new("."));
    let mut errors = Vec::new();
    let mut err = error_sink(ctx, &mut errors);
    let (hash, (clients, entity_types)) = hashed(&policy, known_hash, &mut err, |err| {
        compile_parts(&policy, base_dir, err)
    });
    drop(err);
    if !errors.is_empty() {
        return Err(errors);
    }
    let shadow_clients = clients.values().filter(|c| c.shadow_mode).count();
    Ok(Snapshot {
        version: ctx.version,
        hash,
        clients,
        entity_types: Arc::new(entity_types),
        source: policy,
        shadow_clients,
    })
}

type Compiled = (
    HashMap<String, Arc<Client>>,
    HashMap<String, CompiledEntityType>,
);

/// Error keys are built only when there is an error: a large policy has
/// hundreds of thousands of clients and normally no error at all.
struct ClientKey<'a>(&'a str);

impl std::fmt::Display for ClientKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "clients.{}", self.0)
    }
}

struct SchemaKey<'a>(&'a str, &'a str);

impl std::fmt::Display for SchemaKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "clients.{}.access_schemas.{}", self.0, self.1)
    }
}

fn compile_parts(
    policy: &PolicyFile,
    base_dir: &Path,
    err: &mut impl FnMut(String, String),
) -> Compiled {
    let mut entity_types = HashMap::new();
    for (name, def) in &policy.entity_types {
        let et = EntityType {
            name: name.clone(),
            attr_defs: def.attr_defs.clone(),
        };
        if let Err(e) = et.validate() {
            err(format!("entity_types.{name}.attr_defs"), e);
            continue;
        }
        let full = et.full_tree();
        entity_types.insert(name.clone(), CompiledEntityType { def: et, full });
    }
    let mut clients = HashMap::with_capacity(policy.clients.len());
    let mut caches = Caches::default();
    for (id, def) in &policy.clients {
        let client = compile_client(id, def, policy, &entity_types, base_dir, &mut caches, err);
        clients.insert(id.clone(), Arc::new(client));
    }
    (clients, entity_types)
}

/// What one compile shares between its clients.
#[derive(Default)]
struct Caches<'p> {
    trees: TreeCache<'p>,
    schemas: HashMap<SchemasKey<'p>, Arc<HashMap<String, ClientSchemas>>>,
}

/// Compiles one client's definition; problems go to `err`.
fn compile_client<'p>(
    id: &'p str,
    def: &'p ClientDef,
    policy: &PolicyFile,
    entity_types: &HashMap<String, CompiledEntityType>,
    base_dir: &Path,
    caches: &mut Caches<'p>,
    err: &mut impl FnMut(String, String),
) -> Client {
    let key = ClientKey(id);
    if id.is_empty() {
        err(key.to_string(), "client id must not be empty".into());
    }
    // Basic credentials split at the first colon, so such an id could
    // never authenticate; control characters have no place in an id.
    if id.contains(':') || id.chars().any(char::is_control) {
        err(
            key.to_string(),
            "client id must not contain ':' or control characters".into(),
        );
    }
    let secret = match def.secret.resolve(base_dir) {
        Ok(s) if s.is_empty() => {
            err(format!("{key}.secret"), "secret must not be empty".into());
            String::new()
        }
        Ok(s) => s,
        Err(e) => {
            err(format!("{key}.secret"), e);
            String::new()
        }
    };
    let previous_secret =
        def.previous_secret
            .as_ref()
            .and_then(|p| match p.secret.resolve(base_dir) {
                Ok(s) if !s.is_empty() => Some((s.into_bytes(), p.expires_at)),
                _ => None,
            });
    let mut features = FeatureSet::empty();
    for (i, f) in def.features.iter().enumerate() {
        match Feature::parse(f) {
            Ok(f) => features.insert(f),
            Err(e) => err(format!("{key}.features[{i}]"), e),
        }
    }
    let whitelist = match &def.whitelist {
        None => None,
        Some(list) => {
            let mut nets = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                match parse_cidr(c) {
                    Ok(n) => nets.push(n),
                    Err(e) => err(format!("{key}.whitelist[{i}]"), e.to_string()),
                }
            }
            Some(CidrSet::new(&nets))
        }
    };
    // An owner changes the policy itself: there is no "as if the
    // gateway were not there" for the management API.
    if def.enforcement == Enforcement::Shadow && features.contains(Feature::Owner) {
        err(
            format!("{key}.enforcement"),
            "shadow is not allowed for a client with the owner feature".into(),
        );
    }
    if def
        .tls_client_subject
        .as_deref()
        .is_some_and(|s| s.trim().is_empty() || s.trim() != s)
    {
        err(
            format!("{key}.tls_client_subject"),
            "must be a commonName without leading or trailing spaces".into(),
        );
    }
    for (i, r) in def.roles.iter().enumerate() {
        if super::roles::role_by_name(r).is_none() {
            err(
                format!("{key}.roles[{i}]"),
                format!("{r} is not a built-in role"),
            );
        }
    }
    let rate_limit = def
        .rate_limit
        .as_ref()
        .and_then(|d| match RateLimit::new(d) {
            Ok(l) => Some(l),
            Err(e) => {
                err(format!("{key}.rate_limit.{}", e.field), e.message);
                None
            }
        });
    let shared_key = SchemasKey(&def.access_schemas);
    let schemas = match caches.schemas.get(&shared_key) {
        Some(map) => map.clone(),
        None => {
            let mut map = HashMap::with_capacity(def.access_schemas.len());
            let mut failed = false;
            for (type_name, s) in &def.access_schemas {
                let skey = SchemaKey(id, type_name);
                let Some(et) = entity_types.get(type_name) else {
                    if policy.entity_types.contains_key(type_name) {
                        continue; // already reported as an invalid entity type
                    }
                    failed = true;
                    err(
                        skey.to_string(),
                        format!("{type_name} is not a defined entity type"),
                    );
                    continue;
                };
                match compile_schemas(&et.def, type_name, s, &skey, &mut caches.trees) {
                    Ok(c) => {
                        map.insert(type_name.clone(), c);
                    }
                    Err(es) => {
                        failed = true;
                        for (k, m) in es {
                            err(k, m);
                        }
                    }
                }
            }
            let map = Arc::new(map);
            // Errors name the client, so a list that failed is compiled
            // (and reported) again for every client that has it.
            if !failed {
                caches.schemas.insert(shared_key, map.clone());
            }
            map
        }
    };
    Client {
        id: id.to_string(),
        secret: secret.into_bytes(),
        previous_secret,
        features,
        whitelist,
        on_write_violation: def.on_write_violation,
        shadow_mode: def.enforcement == Enforcement::Shadow,
        tenant: def.tenant.clone(),
        roles: def.roles.clone(),
        schemas,
        tls_client_subject: def.tls_client_subject.clone(),
        rate_limit,
        rate_bucket: Arc::default(),
    }
}

/// A client's `access_schemas` by content. Large policies give thousands of
/// clients the same grants; they share one compiled map instead of each
/// allocating its own.
struct SchemasKey<'p>(&'p BTreeMap<String, AccessSchemasDef>);

impl PartialEq for SchemasKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for SchemasKey<'_> {}

impl Hash for SchemasKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_usize(self.0.len());
        for (type_name, s) in self.0 {
            type_name.hash(h);
            s.read.hash(h);
            s.write.hash(h);
            s.read_with_token.hash(h);
            s.write_with_token.hash(h);
            s.shadow.hash(h);
        }
    }
}

/// Compiled trees shared by every client with the same list on the same
/// type: large policies repeat a handful of schemas thousands of times.
type TreeCache<'p> = HashMap<(&'p str, bool, &'p [String]), Arc<AccessTree>>;

fn compile_schemas<'p>(
    et: &EntityType,
    type_name: &'p str,
    s: &'p AccessSchemasDef,
    key: &dyn std::fmt::Display,
    trees: &mut TreeCache<'p>,
) -> Result<ClientSchemas, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut one =
        |kind: &str, list: &'p Option<Vec<String>>, write: bool| -> Option<Arc<AccessTree>> {
            let list = list.as_ref()?;
            if let Some(t) = trees.get(&(type_name, write, list.as_slice())) {
                return Some(t.clone());
            }
            let mut paths = Vec::with_capacity(list.len());
            let before = errors.len();
            for (i, p) in list.iter().enumerate() {
                match AttrPath::parse(p) {
                    Ok(p) => paths.push(p),
                    Err(e) => errors.push((format!("{key}.{kind}[{i}]"), e.to_string())),
                }
            }
            let tree = if write {
                et.write_tree(&paths)
            } else {
                et.read_tree(&paths)
            };
            match tree {
                Ok(t) if errors.len() == before => {
                    let t = Arc::new(t);
                    trees.insert((type_name, write, list.as_slice()), t.clone());
                    Some(t)
                }
                Ok(_) => None,
                Err(e) => {
                    errors.push((format!("{key}.{kind}"), e.to_string()));
                    None
                }
            }
        };
    let out = ClientSchemas {
        read: one("read", &s.read, false),
        write: one("write", &s.write, true),
        read_with_token: one("read_with_token", &s.read_with_token, false),
        write_with_token: one("write_with_token", &s.write_with_token, true),
        shadow_read: one("shadow.read", &s.shadow.read, false),
        shadow_write: one("shadow.write", &s.shadow.write, true),
        read_only: s.write.as_ref().is_some_and(|w| w.is_empty()),
        read_only_with_token: s
            .write_with_token
            .as_ref()
            .or(s.write.as_ref())
            .is_some_and(|w| w.is_empty()),
    };
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Feeds serialised bytes straight into the digest, without a buffer.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn policy_hash(policy: &PolicyFile) -> Result<String, String> {
    // BTreeMaps make the JSON canonical, so equal policies hash equally.
    // serde_json writes a few bytes at a time; batching them keeps the
    // digest's per-call bookkeeping off the hot path.
    let mut w = std::io::BufWriter::with_capacity(1 << 16, HashWriter(Sha256::new()));
    serde_json::to_writer(&mut w, policy)
        .map_err(|e| format!("the policy could not be serialised for its hash: {e}"))?;
    let HashWriter(digest) = w
        .into_inner()
        .map_err(|e| format!("the policy's hash could not be completed: {e}"))?;
    Ok(digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPES: &str = r#"
entity_types:
  user:
    attr_defs:
      - {name: givenName, type: string}
      - {name: email, type: string}
"#;

    fn compile_text(clients: &str) -> Result<Snapshot, Vec<ConfigError>> {
        let text = format!("{TYPES}clients:\n{clients}");
        let policy: PolicyFile =
            crate::config::settings::from_yaml(Path::new("p.yaml"), &text).map_err(|e| vec![e])?;
        compile(
            policy,
            &CompileContext {
                file: Path::new("p.yaml"),
                version: 1,
            },
        )
    }

    #[test]
    fn clients_with_equal_schemas_share_one_map() {
        let snap = compile_text(
            r#"
  a: {secret: s1, access_schemas: {user: {read: [givenName]}}}
  b: {secret: s2, access_schemas: {user: {read: [givenName]}}}
  c: {secret: s3, access_schemas: {user: {read: [email]}}}
  d: {secret: s4}
"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let map = |id: &str| snap.clients[id].schemas.clone();
        assert!(Arc::ptr_eq(&map("a"), &map("b")));
        assert!(!Arc::ptr_eq(&map("a"), &map("c")));
        assert!(map("d").is_empty());
        let read = |id: &str| map(id)["user"].read.clone().unwrap();
        assert!(read("a").child("givenName").is_some());
        assert!(read("c").child("givenName").is_none());
        assert!(read("c").child("email").is_some());
    }

    #[test]
    fn a_bad_schema_is_reported_for_every_client_that_has_it() {
        let Err(errors) = compile_text(
            r#"
  a: {secret: s1, access_schemas: {user: {read: [nope]}}}
  b: {secret: s2, access_schemas: {user: {read: [nope]}}}
  c: {secret: s3, access_schemas: {other: {read: [x]}}}
  d: {secret: s4, access_schemas: {other: {read: [x]}}}
"#,
        ) else {
            panic!("a policy with unknown attributes compiled");
        };
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "clients.a.access_schemas.user.read",
                "clients.b.access_schemas.user.read",
                "clients.c.access_schemas.other",
                "clients.d.access_schemas.other",
            ]
        );
    }

    #[test]
    fn compiling_from_the_previous_version_equals_compiling_everything() {
        let ctx = CompileContext {
            file: Path::new("p.yaml"),
            version: 2,
        };
        let prev = compile_text(
            r#"
  a: {secret: s1, features: [direct_read_access], access_schemas: {user: {read: [givenName]}}}
  b: {secret: s2, whitelist: ["10.0.0.0/8"]}
  c: {secret: s3}
"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let mut next = prev.source.clone();
        next.clients.remove("c");
        let a = Arc::make_mut(next.clients.get_mut("a").unwrap());
        a.features = vec!["direct_access".into()];
        a.access_schemas.get_mut("user").unwrap().read = Some(vec!["email".into()]);
        let mut d = (*next.clients["b"]).clone();
        d.whitelist = Some(vec!["192.0.2.0/24".into()]);
        next.clients.insert("d".into(), Arc::new(d));
        let from =
            compile_from(&prev, next.clone(), &ctx, None).unwrap_or_else(|e| panic!("{e:?}"));
        let full = compile(next.clone(), &ctx).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(from.hash, full.hash);
        let mut ids: Vec<&String> = from.clients.keys().collect();
        ids.sort();
        assert_eq!(ids, ["a", "b", "d"]);
        // The changed client is compiled anew, its bucket kept; the
        // unchanged one is shared.
        assert!(from.clients["a"].features.contains(Feature::DirectAccess));
        assert!(!from.clients["a"]
            .features
            .contains(Feature::DirectReadAccess));
        let read = from.clients["a"].schemas["user"].read.clone().unwrap();
        assert!(read.child("email").is_some() && read.child("givenName").is_none());
        assert!(Arc::ptr_eq(
            &from.clients["a"].rate_bucket,
            &prev.clients["a"].rate_bucket
        ));
        assert!(!Arc::ptr_eq(&from.clients["a"], &prev.clients["a"]));
        assert!(Arc::ptr_eq(&from.clients["b"], &prev.clients["b"]));
        let ip = |c: &Client, a: &str| c.whitelist.as_ref().unwrap().contains(a.parse().unwrap());
        assert!(ip(&from.clients["d"], "192.0.2.7") && !ip(&from.clients["d"], "10.1.1.1"));
        assert_eq!(from.shadow_clients, full.shadow_clients);
        // A change that does not compile is refused with the full compile's errors.
        let mut bad = next.clone();
        Arc::make_mut(bad.clients.get_mut("b").unwrap()).features = vec!["fly".into()];
        let keys = |r: Result<Snapshot, Vec<ConfigError>>| {
            r.err()
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(compile_from(&prev, bad.clone(), &ctx, None)),
            keys(compile(bad, &ctx))
        );
        // New entity types: everything is compiled again.
        let mut typed = next;
        typed.entity_types.get_mut("user").unwrap().attr_defs.pop();
        let err = keys(compile_from(&from, typed, &ctx, None));
        assert_eq!(err, ["clients.a.access_schemas.user.read"]);
    }
}
