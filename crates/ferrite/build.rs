//! Names the commit the binary is built from, for `ferrite --version`: `$FERRITE_COMMIT` when
//! set (a package build from a tarball), else `git rev-parse` of the checkout (with `-dirty`
//! when the tree has changes), else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=FERRITE_COMMIT");
    let commit = match std::env::var("FERRITE_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => match git(&["rev-parse", "--short=12", "HEAD"]) {
            Some(c) => {
                let dirty = Command::new("git")
                    .args(["diff", "--quiet", "HEAD", "--"])
                    .status()
                    .is_ok_and(|s| s.code() == Some(1));
                if dirty {
                    format!("{c}-dirty")
                } else {
                    c
                }
            }
            None => "unknown".to_string(),
        },
    };
    println!("cargo:rustc-env=FERRITE_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
}
