//! Small state files written so that a crash at any point leaves the old or the new content:
//! persistent reservations (APTPL), running sanitize operations and encrypted LUNs' wrapped
//! data keys. Here rather than in scsi-core so that backstores can use it too.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::Path;

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Where `write_durably` stages the new content of `path`.
pub fn tmp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// fsync a directory, so a rename or unlink inside it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `bytes` atomically and durably: a temporary file in the same directory,
/// fsync, rename over the old file, fsync the directory (created if missing). A crash at any
/// point leaves the old or the new content, never a mix.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

/// [`write_durably`], and the old content overwritten in place (random bytes, synced) before
/// the rename drops it, so that the blocks that held it do not keep it: for secrets such as a
/// replaced wrapped key. On a filesystem that writes in place (ext4, XFS); a copy-on-write
/// filesystem or a flash translation layer may still hold old copies. A crash between the
/// overwrite and the rename leaves the new content in [`tmp_path`] and noise at `path`: the
/// reader must take the staged file then (see `crypt`).
pub fn write_durably_scrubbing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

fn replace(path: &Path, bytes: &[u8], scrub: bool) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{} ({what}): {e}", path.display()))
    };
    let dir = parent_dir(path);
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| ctx("create directory", e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(|e| ctx("sync directory", e))?;
        }
    }
    let tmp = tmp_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| ctx("create temporary file", e))?;
    f.write_all(bytes)
        .map_err(|e| ctx("write temporary file", e))?;
    f.sync_all().map_err(|e| ctx("sync temporary file", e))?;
    drop(f);
    if scrub {
        overwrite_in_place(path).map_err(|e| ctx("overwrite old content", e))?;
    }
    fs::rename(&tmp, path).map_err(|e| ctx("rename", e))?;
    sync_dir(dir).map_err(|e| ctx("sync directory", e))
}

/// Overwrite the file at `path` with random bytes of its length, in place, and sync it; a
/// missing file is fine.
fn overwrite_in_place(path: &Path) -> io::Result<()> {
    let mut f = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
    let mut noise = vec![0u8; len.min(1 << 20)];
    File::open("/dev/urandom")?.read_exact(&mut noise)?;
    f.write_all(&noise)?;
    f.sync_all()
}

/// Remove `path` durably (fsync the directory); a missing file is fine.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent_dir(path)).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: sync directory: {e}", path.display()))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{} (remove): {e}", path.display()),
        )),
    }
}

/// End `text` with its checksum line, `crc32c XXXXXXXX` (the CRC32C of every byte before it):
/// the last line of every state file, so that a damaged one is told from a valid one.
pub fn seal(text: &mut String) {
    let crc = crc32c::crc32c(text.as_bytes());
    text.push_str(&format!("crc32c {crc:08x}\n"));
}

/// The part of a [`seal`]ed text before its checksum line, if the checksum holds.
pub fn unseal(text: &str) -> Result<&str, &'static str> {
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or("truncated")?;
    let (body, last) = text.split_at(body_end);
    let crc = last
        .trim_end()
        .strip_prefix("crc32c ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("no checksum line")?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err("checksum mismatch (damaged)");
    }
    Ok(body)
}

#[cfg(test)]
mod seal_tests {
    use super::*;

    #[test]
    fn sealed_texts_open_and_damaged_ones_do_not() {
        let mut t = String::from("magic v1\nkey value\n");
        seal(&mut t);
        assert_eq!(unseal(&t), Ok("magic v1\nkey value\n"));
        assert_eq!(
            unseal(&t.replace("value", "valve")),
            Err("checksum mismatch (damaged)")
        );
        assert_eq!(unseal("magic v1\n"), Err("truncated"));
        assert_eq!(unseal("magic v1\nno checksum\n"), Err("no checksum line"));
        assert_eq!(unseal(""), Err("truncated"));
    }
}
