//! Where the conformance tests find the repository's lists and the shared scoring script.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `shared/` beside the repository, or `FERRITE_SHARED_DIR`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("FERRITE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared"))
}

/// A `name value…` list file with `#` comments (known failures: `Suite.Test  reason`; floors:
/// `kind passed`).
pub fn read_list(path: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((name, rest)) => (name.to_string(), rest.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// One scored test of the conformance script's JSON: `(status, "Suite.Test", why)`.
pub fn verdicts(json: &Path) -> Vec<(String, String, String)> {
    let text = fs::read_to_string(json).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", json.display()));
    let field = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let why = field(r, "why")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let name = format!("{}.{}", field(r, "suite"), field(r, "test"));
            (field(r, "status"), name, why)
        })
        .collect()
}
