//! Build script: the git commit the binary is built from, for `herald --version`
//! (`HERALD_GIT_COMMIT`; "unknown" outside a git checkout, as from a source tarball).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|commit| commit.trim().to_string())
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    // The commit only: whether the tree had local edits is not known without rerunning this on
    // every edit, which would rebuild the server each time.
    println!("cargo:rustc-env=HERALD_GIT_COMMIT={commit}");
    // A new commit (or a switch of branch) reruns this.
    for path in ["../../.git/HEAD", "../../.git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
