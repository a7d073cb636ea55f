//! The README's sample configuration, fed to the real loader (what `herald check-config` runs),
//! so the file newcomers copy is never one Herald refuses.

use herald_server::config::{Overrides, Settings};

/// The ```toml block of the README's "## Configuration" section (before the next `## `
/// heading), without its fences; `None` when that section has none.
fn configuration_toml(readme: &str) -> Option<&str> {
    let start = readme.find("\n## Configuration\n")? + 1;
    let section = &readme[start..];
    let section = match section.find("\n## ") {
        Some(end) => &section[..=end],
        None => section,
    };
    let open = section.find("\n```toml\n")? + "\n```toml\n".len();
    let block = &section[open..];
    let close = block.find("\n```")?;
    Some(&block[..close + 1])
}

#[test]
fn the_readme_s_sample_config_is_accepted_by_the_config_loader() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
    let toml = configuration_toml(&readme)
        .unwrap_or_else(|| panic!("README.md has no ```toml block under \"## Configuration\""));
    assert!(!toml.trim().is_empty(), "the README's ```toml block under \"## Configuration\" is empty");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readme.toml");
    std::fs::write(&file, toml).unwrap();
    // As `herald check-config --config FILE` loads it: the file, then HERALD_* variables.
    herald_server::install_crypto_provider();
    if let Err(error) = Settings::load(Some(file.as_path()), &Overrides::default()) {
        panic!("herald refuses the README's sample config: {error}\n--- the block ---\n{toml}");
    }
}

#[test]
fn the_block_is_looked_for_only_in_the_configuration_section() {
    let readme = "# Herald\n\n## Configuration\n\nText.\n\n```toml\nlisten = \"127.0.0.1:1\"\n```\n\n## Docs\n";
    assert_eq!(configuration_toml(readme), Some("listen = \"127.0.0.1:1\"\n"));
    let elsewhere = "# Herald\n\n## Configuration\n\nNo block.\n\n## Docs\n\n```toml\nlisten = \"x\"\n```\n";
    assert_eq!(configuration_toml(elsewhere), None);
    assert_eq!(configuration_toml("# Herald\n\n```toml\nlisten = \"x\"\n```\n"), None);
}
