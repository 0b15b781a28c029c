//! Persistent reservation state on disk: where each logical unit's APTPL file lives, attaching
//! it when a logical unit is built, and the offline `ferrite pr` subcommand.
//!
//! State directory, first that applies: `settings.state_dir` (or `serve --state-dir`);
//! `$STATE_DIRECTORY` (systemd's `StateDirectory=ferrite` gives `/var/lib/ferrite`);
//! `$XDG_STATE_HOME/ferrite`; `$HOME/.local/state/ferrite`; `./ferrite-state`. One file per
//! logical unit, `<target>_lun<N>.pr` (format in `scsi_core::FilePrStore`). RAM logical units
//! keep theirs there too, so APTPL works on the zero-config demo (the Linux kernel's
//! `IOC_PR_REGISTER` always asks for it); their sanitize/format journal (`.medium`) only with a
//! directory set explicitly, as their data does not survive a restart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use scsi_core::{FilePrStore, LogicalUnit, PrState, PrStore, Reservation, Who};

/// The state directory and whether it was chosen explicitly (settings, flag, systemd).
pub fn state_dir(configured: Option<&Path>) -> (PathBuf, bool) {
    if let Some(d) = configured {
        return (d.to_path_buf(), true);
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = crate::systemd::directory("STATE_DIRECTORY") {
        return (d, true);
    }
    if let Some(x) = env("XDG_STATE_HOME") {
        return (PathBuf::from(x).join("ferrite"), false);
    }
    if let Some(h) = env("HOME") {
        return (PathBuf::from(h).join(".local/state/ferrite"), false);
    }
    (PathBuf::from("ferrite-state"), false)
}

/// `<target>_lun<N>.pr`, with anything unusual in the target name replaced.
pub fn file_name(target: &str, lun: u64) -> String {
    let t: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{t}_lun{lun}.pr")
}

/// Where a LUN keeps its state file with extension `ext` (`<target>_lun<N>.<ext>` in the state
/// directory), or `None` when `only_explicit` and no state directory was configured.
fn lun_state_file(
    configured: Option<&Path>,
    target: &str,
    lun: u64,
    only_explicit: bool,
    ext: &str,
) -> Option<PathBuf> {
    let (dir, explicit) = state_dir(configured);
    if only_explicit && !explicit {
        return None;
    }
    let name = file_name(target, lun);
    let base = name.strip_suffix(".pr").unwrap_or(&name);
    Some(dir.join(format!("{base}.{ext}")))
}

/// Where an encrypted file or block LUN keeps its wrapped data key (`<target>_lun<N>.dek`).
pub fn key_state_file(configured: Option<&Path>, target: &str, lun: u64) -> PathBuf {
    lun_state_file(configured, target, lun, false, "dek").expect("not only explicit")
}

/// Give `lu` its state file and restore what it holds. A damaged file is an error: the daemon
/// must not start without the registrations it promised to keep.
pub fn attach(
    lu: &LogicalUnit,
    configured: Option<&Path>,
    target: &str,
    lun: u64,
    _ram: bool,
) -> anyhow::Result<()> {
    // Every LU, RAM ones too: APTPL promises the registrations survive a restart.
    let Some(path) = lun_state_file(configured, target, lun, false, "pr") else {
        return Ok(());
    };
    lu.set_pr_store(Arc::new(FilePrStore::new(path)))
        .map_err(|e| anyhow::anyhow!("target {target} LUN {lun}: persistent reservations: {e}"))
}

/// Give `lu` its journal of long medium operations (beside its reservation file, `.medium`
/// for `.pr`) and act on it: a sanitize or format a stop cut short starts again, a failed one
/// keeps the LU refusing media access (SBC-4 §4.11). Same rule as [`attach`]: RAM LUNs only
/// with a configured state directory.
pub fn attach_op_journal(
    lu: &Arc<LogicalUnit>,
    configured: Option<&Path>,
    target: &str,
    lun: u64,
    ram: bool,
) -> anyhow::Result<()> {
    let Some(path) = lun_state_file(configured, target, lun, ram, "medium") else {
        return Ok(());
    };
    let journal = scsi_core::FileOpJournal::new(path);
    match lu
        .set_journal(Arc::new(journal))
        .map_err(|e| anyhow::anyhow!("target {target} LUN {lun}: operation journal: {e}"))?
    {
        scsi_core::Resume::Nothing => {}
        scsi_core::Resume::Restarted => tracing::warn!(
            target,
            lun,
            "a sanitize or format was running at the last stop: started again"
        ),
        scsi_core::Resume::Failed => tracing::warn!(
            target,
            lun,
            "the last sanitize or format failed: media access stays refused until one succeeds"
        ),
    }
    Ok(())
}

fn who(w: &Who) -> String {
    let isid = w
        .isid
        .map_or(" (every ISID)".to_string(), |i| format!(",i,0x{i:012x}"));
    let port = w.port.map_or("every target port".to_string(), |p| {
        format!("target port {p}")
    });
    format!("{}{isid}, {port}", w.initiator)
}

/// Human-readable lines for one saved state.
pub fn describe(st: &PrState) -> String {
    let mut out = format!(
        "  APTPL {}, {} registration(s)\n",
        if st.aptpl { "on" } else { "off" },
        st.registrations.len()
    );
    for r in &st.registrations {
        out += &format!("  key 0x{:016x}  {}\n", r.key, who(&r.who));
    }
    match &st.reservation {
        None => out += "  no reservation\n",
        Some(Reservation::AllRegistrants { ty }) => {
            out += &format!("  reservation: {}, held by every registrant\n", ty.name())
        }
        Some(Reservation::Single { ty, holder }) => {
            out += &format!("  reservation: {}, held by {}\n", ty.name(), who(holder))
        }
    }
    out
}

/// `ferrite pr show|clear` (see `cli::PrArgs`).
pub fn run(args: crate::cli::PrArgs) -> ExitCode {
    let (dir, _) = state_dir(args.state_dir.as_deref());
    match args.command {
        crate::cli::PrCmd::Show => show(&dir),
        crate::cli::PrCmd::Clear { lun_file } => clear(&dir, &lun_file),
    }
}

fn show(dir: &Path) -> ExitCode {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{}: no saved persistent reservations", dir.display());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ferrite pr: {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pr"))
        .collect();
    files.sort();
    if files.is_empty() {
        println!("{}: no saved persistent reservations", dir.display());
    }
    let mut status = ExitCode::SUCCESS;
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match FilePrStore::new(&f).load() {
            Ok(Some(st)) => print!("{name}\n{}", describe(&st)),
            Ok(None) => {}
            Err(e) => {
                println!("{name}\n  DAMAGED: {e}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}

fn clear(dir: &Path, name: &str) -> ExitCode {
    if name.contains('/') || name.starts_with('.') {
        eprintln!("ferrite pr: --lun-file is a file name inside the state directory");
        return ExitCode::from(2);
    }
    let path = dir.join(name);
    if !path.exists() {
        eprintln!("ferrite pr: {}: no such state file", path.display());
        return ExitCode::FAILURE;
    }
    if let Ok(Some(st)) = FilePrStore::new(&path).load() {
        print!("removing {}\n{}", path.display(), describe(&st));
    } else {
        println!("removing {} (damaged)", path.display());
    }
    // Saving "nothing survives" removes the file and syncs the directory.
    match FilePrStore::new(&path).save(&PrState::default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrite pr: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dirs() {
        assert_eq!(
            file_name("iqn.2026-11.io.ferrite:demo", 3),
            "iqn.2026-11.io.ferrite:demo_lun3.pr"
        );
        assert_eq!(file_name("iqn.x/../y", 0), "iqn.x_.._y_lun0.pr");
        let (d, explicit) = state_dir(Some(Path::new("/srv/state")));
        assert_eq!((d, explicit), (PathBuf::from("/srv/state"), true));
    }
}
