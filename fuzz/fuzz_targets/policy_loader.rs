//! Fuzzes the policy loader: YAML -> `PolicyFile` -> compiled snapshot.
//!
//! Input: the whole input as one UTF-8 string (policy files are read with
//! `read_to_string`, so non-UTF-8 never reaches `from_yaml`).
//!
//! `file:` secret references are redirected below a directory that does not
//! exist, so a fuzzed policy cannot make the target read `/dev/zero` or a
//! FIFO; the loader still takes its "cannot read secret file" path.
//!
//! Properties: no panic; a policy that compiles is what the management API
//! would persist, so serialising it to YAML and loading that again must give
//! the same policy, which must compile again to the same hash.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use recordgate::policy::compile::{compile, policy_hash, CompileContext};
use recordgate::policy::model::{PolicyFile, SecretRef, SecretSource};
use recordgate::config::settings::from_yaml;

const NOWHERE: &str = "/nonexistent-recordgate-fuzz/";

fn sandbox(s: &mut SecretSource) {
    if let SecretSource::Reference(SecretRef::File(p)) = s {
        *p = format!("{NOWHERE}{p}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    let Ok(mut policy) = from_yaml::<PolicyFile>(file, text) else {
        return;
    };
    for c in policy.clients.values_mut() {
        let c = std::sync::Arc::make_mut(c);
        sandbox(&mut c.secret);
        if let Some(p) = c.previous_secret.as_mut() {
            sandbox(&mut p.secret);
        }
    }
    let ctx = CompileContext { file, version: 1 };
    let Ok(snap) = compile(policy.clone(), &ctx) else {
        return;
    };
    assert_eq!(
        snap.source, policy,
        "snapshot source differs from the input policy"
    );
    assert_eq!(Ok(snap.hash.clone()), policy_hash(&policy));

    // Persist and reload, as the management API and a restart would.
    let yaml = match serde_yaml::to_string(&snap.source) {
        Ok(y) => y,
        Err(e) => panic!("a compiled policy cannot be written as YAML: {e}"),
    };
    let reloaded = match from_yaml::<PolicyFile>(file, &yaml) {
        Ok(p) => p,
        Err(e) => panic!("persisted policy does not load again: {e}\n{yaml}"),
    };
    assert_eq!(
        reloaded, policy,
        "persisted policy loads differently:\n{yaml}"
    );
    match compile(reloaded, &ctx) {
        Ok(again) => assert_eq!(again.hash, snap.hash, "hash changed after reload"),
        Err(e) => panic!("persisted policy no longer compiles: {e:?}\n{yaml}"),
    }
});
