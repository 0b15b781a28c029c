//! Where persistent reservation state survives a restart (SPC-4 §5.13.5, APTPL).
//!
//! The engine calls [`PrStore::save`] with the state a power loss must leave behind: the whole
//! state when APTPL is set, and a state with `aptpl == false` (meaning "nothing survives")
//! otherwise. [`FilePrStore`] writes one file per logical unit; an etcd store can implement
//! the same trait later.
//!
//! # File format (version 1)
//!
//! Text, one record per line, so an operator can read it:
//!
//! ```text
//! ferrite-pr-state 1
//! aptpl 1
//! reg 00000000000000a1 1 23d000000001 iqn.2026-11.io.example:node-a
//! reg 00000000000000b2 * * iqn.2026-11.io.example:node-b
//! resv single 5 1 23d000000001 iqn.2026-11.io.example:node-a
//! crc32c 1b2c3d4e
//! ```
//!
//! `reg KEY PORT ISID NAME`: key in hex, relative target port (`*`: every port, ALL_TG_PT),
//! ISID in hex (`*`: every ISID), initiator name (bytes outside `[A-Za-z0-9.:_-]`
//! percent-encoded). `resv single TYPE PORT ISID NAME` or `resv all TYPE`. The last line is
//! CRC32C of every byte before it. PRGENERATION is not stored: it is zero after power on
//! (SPC-4 §6.15.2).
//!
//! Writes are atomic: a temporary file in the same directory, fsync, rename over the old file,
//! fsync the directory. A crash at any point leaves the old or the new file, never a mix. A
//! file that fails its checksum or does not parse is an error, not an empty state: losing
//! registrations silently would unfence a fenced node.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::state::{PrState, PrType, Registration, Reservation, Who};
use crate::durable::{remove_durably, write_durably};

/// Where the persistent reservation state of one logical unit lives.
pub trait PrStore: Send + Sync {
    /// The state saved last, `None` if nothing is saved.
    fn load(&self) -> io::Result<Option<PrState>>;
    /// Make `st` what the next [`load`](Self::load) returns; with `st.aptpl == false` nothing
    /// survives (the next load returns `None`). Durable when it returns `Ok`.
    fn save(&self, st: &PrState) -> io::Result<()>;
    /// For logs and error messages.
    fn describe(&self) -> String {
        "persistent reservation store".into()
    }
}

/// The current format version.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "ferrite-pr-state";

/// One file per logical unit (see the module documentation).
#[derive(Debug)]
pub struct FilePrStore {
    path: PathBuf,
}

impl FilePrStore {
    pub fn new(path: impl Into<PathBuf>) -> FilePrStore {
        FilePrStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: {msg} (refusing to start without the saved persistent reservations; \
             inspect it with `ferrite pr show`, remove it with `ferrite pr clear` to drop them)",
            path.display()
        ),
    )
}

impl PrStore for FilePrStore {
    fn load(&self) -> io::Result<Option<PrState>> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", self.path.display()),
                ))
            }
        };
        decode(&bytes).map(Some).map_err(|m| invalid(&self.path, m))
    }

    fn save(&self, st: &PrState) -> io::Result<()> {
        if !st.aptpl {
            // SPC-4 §5.13.5: APTPL = 0 — a power loss leaves no registrations behind.
            return remove_durably(&self.path);
        }
        write_durably(&self.path, encode(st).as_bytes())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A store in memory (tests; logical units without a state directory).
#[derive(Debug, Default)]
pub struct MemPrStore {
    saved: Mutex<Option<PrState>>,
    fail: Mutex<bool>,
}

impl MemPrStore {
    pub fn new() -> MemPrStore {
        MemPrStore::default()
    }

    /// Make every later `save` fail (to test that a failed save changes nothing).
    pub fn set_failing(&self, fail: bool) {
        *self.fail.lock().unwrap_or_else(|e| e.into_inner()) = fail;
    }

    /// What a restart would load.
    pub fn saved(&self) -> Option<PrState> {
        self.saved.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl PrStore for MemPrStore {
    fn load(&self) -> io::Result<Option<PrState>> {
        Ok(self.saved())
    }

    fn save(&self, st: &PrState) -> io::Result<()> {
        if *self.fail.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(io::Error::other("injected save failure"));
        }
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        *s = st.aptpl.then(|| PrState {
            generation: 0,
            ..st.clone()
        });
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b".:_-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(super) fn who_fields(w: &Who) -> String {
    let port = w.port.map_or("*".to_string(), |p| p.to_string());
    let isid = w.isid.map_or("*".to_string(), |i| format!("{i:012x}"));
    format!("{port} {isid} {}", escape(&w.initiator))
}

/// The file contents for `st` (format version 1).
pub fn encode(st: &PrState) -> String {
    let mut s = format!("{MAGIC} {FORMAT_VERSION}\n");
    state_lines(st, &mut s);
    seal(s)
}

pub(super) fn parse_who(f: &[&str]) -> Result<Who, String> {
    let [port, isid, name] = f else {
        return Err("expected PORT ISID NAME".into());
    };
    let port = match *port {
        "*" => None,
        p => Some(p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?),
    };
    let isid = match *isid {
        "*" => None,
        i => {
            // Written with 12 digits; whatever the login layer let through must load again.
            if i.is_empty() || i.len() > 16 {
                return Err(format!("bad ISID {i:?}"));
            }
            Some(u64::from_str_radix(i, 16).map_err(|_| format!("bad ISID {i:?}"))?)
        }
    };
    // Any name an initiator logged in with must load again (escaped when written), so only
    // the escaping itself is checked here.
    let initiator = unescape(name).ok_or_else(|| format!("bad initiator name {name:?}"))?;
    if name.is_empty() {
        return Err("empty initiator name".into());
    }
    Ok(Who {
        initiator,
        isid,
        port,
    })
}

/// Check the framing of a sealed text record: the header `MAGIC VERSION` and the CRC32C line
/// at the end. Returns the lines between them.
pub(super) fn unframe<'a>(bytes: &'a [u8], magic: &str, version: u32) -> Result<&'a str, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let header = text.lines().next().unwrap_or("");
    let got = header
        .strip_prefix(magic)
        .and_then(|v| v.strip_prefix(' '))
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| format!("not a {magic} record"))?;
    if got != version {
        return Err(format!(
            "format version {got}, this ferrite reads version {version}"
        ));
    }
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or_else(|| "truncated (no checksum)".to_string())?;
    let (body, last) = text.split_at(body_end);
    if !last.starts_with("crc32c ") {
        return Err("truncated or damaged (no checksum line)".into());
    }
    let crc = crc32c::crc32c(body.as_bytes());
    if last != format!("crc32c {crc:08x}\n") {
        return Err(format!(
            "checksum mismatch (record says {:?}, contents give {crc:08x})",
            last.trim_end()
        ));
    }
    Ok(body.split_once('\n').map_or("", |(_, rest)| rest))
}

/// Seal `body` (which starts with its header line): append the CRC32C line.
pub(super) fn seal(mut body: String) -> String {
    let crc = crc32c::crc32c(body.as_bytes());
    let _ = writeln!(body, "crc32c {crc:08x}");
    body
}

/// The state's records (`aptpl`, `reg`, `resv`), one per line.
pub(super) fn state_lines(st: &PrState, s: &mut String) {
    let _ = writeln!(s, "aptpl {}", u8::from(st.aptpl));
    for r in &st.registrations {
        let _ = writeln!(s, "reg {:016x} {}", r.key, who_fields(&r.who));
    }
    match &st.reservation {
        Some(Reservation::Single { ty, holder }) => {
            let _ = writeln!(s, "resv single {} {}", ty.code(), who_fields(holder));
        }
        Some(Reservation::AllRegistrants { ty }) => {
            let _ = writeln!(s, "resv all {}", ty.code());
        }
        None => {}
    }
}

/// Reads the state's records back, line by line, in the order [`state_lines`] writes them.
#[derive(Default)]
pub(super) struct StateParser {
    pub st: PrState,
    seen_aptpl: bool,
}

impl StateParser {
    /// Take one record; `Ok(false)` if it is not a state record (the caller's, or an error).
    pub fn line(&mut self, f: &[&str]) -> Result<bool, String> {
        let st = &mut self.st;
        match f {
            ["aptpl", v] if !self.seen_aptpl => {
                st.aptpl = match *v {
                    "0" => false,
                    "1" => true,
                    _ => return Err(format!("bad aptpl {v:?}")),
                };
                self.seen_aptpl = true;
            }
            ["reg", key, rest @ ..] if self.seen_aptpl && st.reservation.is_none() => {
                let key = u64::from_str_radix(key, 16)
                    .ok()
                    .filter(|_| key.len() == 16)
                    .ok_or_else(|| format!("bad key {key:?}"))?;
                let who = parse_who(rest)?;
                st.registrations.push(Registration { key, who });
            }
            ["resv", "single", ty, rest @ ..] if self.seen_aptpl && st.reservation.is_none() => {
                let ty = parse_type(ty)?;
                if ty.all_registrants() {
                    return Err("an all registrants type held by one I_T nexus".into());
                }
                let holder = parse_who(rest)?;
                st.reservation = Some(Reservation::Single { ty, holder });
            }
            ["resv", "all", ty] if self.seen_aptpl && st.reservation.is_none() => {
                let ty = parse_type(ty)?;
                if !ty.all_registrants() {
                    return Err("not an all registrants type".into());
                }
                st.reservation = Some(Reservation::AllRegistrants { ty });
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub fn finish(self) -> Result<PrState, String> {
        if !self.seen_aptpl {
            return Err("no aptpl record".into());
        }
        Ok(self.st)
    }
}

/// Parse a saved file: header, checksum, then every record; anything unexpected is an error.
pub fn decode(bytes: &[u8]) -> Result<PrState, String> {
    let body = unframe(bytes, MAGIC, FORMAT_VERSION)?;
    let mut p = StateParser::default();
    for (n, line) in body.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let err = |m: String| format!("line {}: {m}", n + 2);
        if !p.line(&f).map_err(err)? {
            return Err(err(format!("unexpected record {line:?}")));
        }
    }
    p.finish()
}

fn parse_type(s: &str) -> Result<PrType, String> {
    s.parse::<u8>()
        .ok()
        .and_then(PrType::from_code)
        .ok_or_else(|| format!("bad reservation type {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PrState {
        PrState {
            generation: 9,
            aptpl: true,
            registrations: vec![
                Registration {
                    key: 0xA1,
                    who: Who {
                        initiator: "iqn.2026-11.io.example:node-a".into(),
                        isid: Some(0x23d0_0000_0001),
                        port: Some(1),
                    },
                },
                Registration {
                    key: 0xB2,
                    who: Who {
                        initiator: "iqn.2026-11.io.example:Node%B".into(),
                        isid: None,
                        port: None,
                    },
                },
            ],
            reservation: Some(Reservation::Single {
                ty: PrType::WriteExclusiveRegistrantsOnly,
                holder: Who {
                    initiator: "iqn.2026-11.io.example:node-a".into(),
                    isid: Some(0x23d0_0000_0001),
                    port: Some(1),
                },
            }),
        }
    }

    #[test]
    fn round_trip_without_generation() {
        let st = sample();
        let text = encode(&st);
        assert!(text.starts_with("ferrite-pr-state 1\naptpl 1\nreg 00000000000000a1 1 23d000000001 iqn.2026-11.io.example:node-a\n"));
        assert!(text.contains("Node%25B"));
        let back = decode(text.as_bytes()).unwrap();
        assert_eq!(
            back,
            PrState {
                generation: 0,
                ..st
            }
        );
        let all = PrState {
            reservation: Some(Reservation::AllRegistrants {
                ty: PrType::ExclusiveAccessAllRegistrants,
            }),
            ..sample()
        };
        assert_eq!(
            decode(encode(&all).as_bytes()).unwrap().reservation,
            all.reservation
        );
        let empty = PrState {
            aptpl: true,
            ..PrState::default()
        };
        assert_eq!(decode(encode(&empty).as_bytes()).unwrap(), empty);
    }

    #[test]
    fn damage_is_an_error() {
        let text = encode(&sample());
        // Every truncation.
        for cut in 0..text.len() {
            assert!(decode(&text.as_bytes()[..cut]).is_err(), "cut at {cut}");
        }
        // Every single flipped bit.
        for i in 0..text.len() {
            for bit in 0..8 {
                let mut b = text.clone().into_bytes();
                b[i] ^= 1 << bit;
                assert!(decode(&b).is_err(), "byte {i} bit {bit}");
            }
        }
        // Another version.
        let v2 = text.replacen("ferrite-pr-state 1", "ferrite-pr-state 2", 1);
        assert!(decode(v2.as_bytes()).unwrap_err().contains("version 2"));
    }

    #[test]
    fn records_are_checked_even_with_a_good_checksum() {
        let reseal = |body: &str| {
            let crc = crc32c::crc32c(body.as_bytes());
            format!("{body}crc32c {crc:08x}\n")
        };
        for body in [
            "ferrite-pr-state 1\n",
            "ferrite-pr-state 1\naptpl 2\n",
            "ferrite-pr-state 1\naptpl 1\nreg 1 1 000000000001 iqn.a\n",
            "ferrite-pr-state 1\naptpl 1\nreg 0000000000000001 x 000000000001 iqn.a\n",
            "ferrite-pr-state 1\naptpl 1\nreg 0000000000000001 1 12345678901234567 iqn.a\n",
            "ferrite-pr-state 1\naptpl 1\nreg 0000000000000001 1 * iqn%zz\n",
            "ferrite-pr-state 1\naptpl 1\nreg 0000000000000001 1 * iqn%FF\n",
            "ferrite-pr-state 1\naptpl 1\nresv all 5\n",
            "ferrite-pr-state 1\naptpl 1\nresv single 7 1 * iqn.a\n",
            "ferrite-pr-state 1\naptpl 1\nresv single 5 1 * iqn.a\nreg 0000000000000001 1 * iqn.a\n",
            "ferrite-pr-state 1\naptpl 1\nbogus\n",
            "ferrite-pr-state 1\naptpl 1\naptpl 1\n",
        ] {
            assert!(decode(reseal(body).as_bytes()).is_err(), "{body}");
        }
        assert!(decode(reseal("ferrite-pr-state 1\naptpl 0\n").as_bytes()).is_ok());
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ferrite-pr-store-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn file_store_save_load_remove() {
        let dir = scratch("file");
        let path = dir.join("sub").join("t_lun0.pr");
        let s = FilePrStore::new(&path);
        assert_eq!(s.load().unwrap(), None);
        // APTPL = 0 with no file: nothing happens, no directory is made.
        s.save(&PrState::default()).unwrap();
        assert!(!path.exists());
        let st = sample();
        s.save(&st).unwrap();
        assert_eq!(
            s.load().unwrap(),
            Some(PrState {
                generation: 0,
                ..st.clone()
            })
        );
        assert!(!crate::durable::tmp_path(&path).exists());
        // A stale temporary file (a crash before the rename) does not matter.
        fs::write(crate::durable::tmp_path(&path), b"garbage").unwrap();
        assert_eq!(s.load().unwrap().unwrap().registrations, st.registrations);
        s.save(&st).unwrap();
        // APTPL = 0: the file goes.
        s.save(&PrState { aptpl: false, ..st }).unwrap();
        assert!(!path.exists());
        assert_eq!(s.load().unwrap(), None);
        // Damage: refuse with a message naming the file.
        fs::write(&path, b"ferrite-pr-state 1\naptpl 1\n").unwrap();
        let e = s.load().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("t_lun0.pr"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn mem_store() {
        let m = MemPrStore::new();
        m.save(&sample()).unwrap();
        assert_eq!(m.load().unwrap().unwrap().generation, 0);
        m.set_failing(true);
        assert!(m.save(&PrState::default()).is_err());
        assert!(m.load().unwrap().is_some());
        m.set_failing(false);
        m.save(&PrState::default()).unwrap();
        assert_eq!(m.load().unwrap(), None);
    }
}
