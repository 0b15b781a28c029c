//! The Debian package (`ops/build-deb.sh`): built from the test binary with dpkg-deb, it holds
//! the binary, the unit, the example configuration (a conffile) and the man page; installed
//! with dpkg into a scratch root, `ferrite --version` runs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{require_tool, run, TempDir};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn the_debian_package_builds_installs_and_runs() {
    for t in ["dpkg-deb", "dpkg", "gzip"] {
        require_tool(t);
    }
    let dir = TempDir::new("deb");
    let script = common::conformance::repo_root().join("ops/build-deb.sh");
    let out_dir = dir.path().join("out");
    let built = run(
        "bash",
        &[
            script.to_str().unwrap(),
            env!("CARGO_BIN_EXE_ferrite"),
            out_dir.to_str().unwrap(),
        ],
        LIMIT,
    )
    .ok();
    let deb = built.stdout.trim().to_string();
    assert!(Path::new(&deb).is_file(), "{}", built.describe());
    let contents = run("dpkg-deb", &["--contents", &deb], LIMIT).ok().stdout;
    for path in [
        "./usr/bin/ferrite",
        "./lib/systemd/system/ferrite.service",
        "./etc/ferrite/ferrite.toml",
        "./usr/share/man/man8/ferrite.8.gz",
        "./usr/share/doc/ferrite/examples/grafana-dashboard.json",
        "./usr/share/doc/ferrite/examples/floating-portals.conf",
        "./usr/share/bash-completion/completions/ferrite",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{contents}"
        );
    }
    let info = run("dpkg-deb", &["--field", &deb, "Package", "Version"], LIMIT)
        .ok()
        .stdout;
    assert!(info.contains("Package: ferrite"), "{info}");
    // Install into a scratch root with its own (empty) dpkg database.
    let root = dir.path().join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    let root_arg = format!("--root={}", root.display());
    let installed = run(
        "dpkg",
        &[
            &root_arg,
            "--force-script-chrootless",
            "--force-not-root",
            // libc6 is not in the scratch root's database.
            "--force-depends",
            "-i",
            &deb,
        ],
        LIMIT,
    );
    assert!(installed.status.success(), "{}", installed.describe());
    let status = run("dpkg", &[&root_arg, "-s", "ferrite"], LIMIT)
        .ok()
        .stdout;
    assert!(status.contains("Status: install ok installed"), "{status}");
    let bin = root.join("usr/bin/ferrite");
    let version = run(bin.to_str().unwrap(), &["--version"], LIMIT)
        .ok()
        .stdout;
    assert!(version.starts_with("ferrite "), "{version}");
    assert!(version.contains("commit "), "{version}");
    // The configuration it installs is TOML with a target in it.
    let cfg = root.join("etc/ferrite/ferrite.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let parsed: toml::Value = toml::from_str(&text).expect("TOML");
    assert!(parsed["target"][0]["name"].is_str(), "{text}");
}
