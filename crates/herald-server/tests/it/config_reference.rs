//! The configuration reference cannot drift from the code: every key of the configuration
//! structs is in `herald.example.toml` (set, or commented out where keys exclude each other)
//! and in `docs/configuration.md`; neither names a key that does not exist; and the example
//! loads through the real loader.

use std::collections::BTreeSet;

use herald_server::config::{Overrides, RawConfig, RawNamespace, RawWebhook, Settings};
use herald_server::pusher::apps::{RawPusherApp, RawPusherWebhook};
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Every key path of the configuration structs, with `NAME` for a map's keys and `[]` for an
/// array of tables: `websocket.ping_interval`, `namespaces.NAME.durable`, `webhooks[].url`.
fn struct_keys() -> BTreeSet<String> {
    // Every optional table present, every list of tables with one entry, so all keys show.
    let mut raw = RawConfig {
        auth: Some(Default::default()),
        redis: Some(Default::default()),
        nats: Some(Default::default()),
        storage: Some(Default::default()),
        tls: Some(Default::default()),
        ..Default::default()
    };
    raw.namespaces.insert("NAME".into(), RawNamespace::default());
    raw.webhooks.push(RawWebhook::default());
    let app = RawPusherApp { webhooks: vec![RawPusherWebhook::default()], ..Default::default() };
    raw.pusher.apps.push(app);
    let mut keys = BTreeSet::new();
    walk(&serde_json::to_value(&raw).unwrap(), "", &mut keys);
    keys
}

fn walk(value: &Value, prefix: &str, keys: &mut BTreeSet<String>) {
    let Value::Object(fields) = value else { return };
    for (name, value) in fields {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match value {
            Value::Object(_) => walk(value, &path, keys),
            Value::Array(items) if items.first().is_some_and(Value::is_object) => {
                walk(&items[0], &format!("{path}[]"), keys)
            }
            _ => {
                keys.insert(path);
            }
        }
    }
}

/// The key paths of a TOML file, commented-out ones (`# key = …`, `# [table]`) included.
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix('#').map_or(line, str::trim_start);
        if let Some(header) = line.strip_prefix("[[").and_then(|rest| rest.split_once("]]")) {
            // An array of tables: each level that is one ends in `[]`.
            table = header.0.trim().replace("apps.webhooks", "apps[].webhooks") + "[]";
        } else if let Some(header) = line.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
            let header = header.0.trim();
            table = match header.strip_prefix("namespaces.") {
                Some(_) => "namespaces.NAME".to_string(),
                None => header.to_string(),
            };
        } else if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.insert(if table.is_empty() { key.to_string() } else { format!("{table}.{key}") });
            }
        }
    }
    keys
}

#[test]
fn every_key_is_in_the_example_and_the_reference_and_nothing_else_is() {
    let keys = struct_keys();
    assert!(keys.len() >= 70, "{keys:?}");
    let example = std::fs::read_to_string(format!("{ROOT}/herald.example.toml")).unwrap();
    let in_example = example_keys(&example);
    let missing: Vec<_> = keys.difference(&in_example).collect();
    assert!(missing.is_empty(), "keys missing from herald.example.toml: {missing:?}");
    let invented: Vec<_> = in_example.difference(&keys).collect();
    assert!(invented.is_empty(), "herald.example.toml names keys that do not exist: {invented:?}");

    // The reference's keys: the first column of its tables.
    let reference = std::fs::read_to_string(format!("{ROOT}/docs/configuration.md")).unwrap();
    let documented: BTreeSet<String> = reference
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split_once('`').map(|(key, _)| key.to_string()))
        .collect();
    let missing: Vec<_> = keys.difference(&documented).collect();
    assert!(missing.is_empty(), "keys missing from docs/configuration.md: {missing:?}");
    let invented: Vec<_> = documented.difference(&keys).collect();
    assert!(invented.is_empty(), "docs/configuration.md names keys that do not exist: {invented:?}");
}

#[test]
fn the_example_loads_through_the_real_loader() {
    let path = std::path::PathBuf::from(format!("{ROOT}/herald.example.toml"));
    let settings = Settings::load(Some(&path), &Overrides::default());
    assert!(settings.is_ok(), "{:?}", settings.err());
}

/// For writing the reference: `cargo test config_reference -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_the_keys() {
    for key in struct_keys() {
        println!("{key}");
    }
}
