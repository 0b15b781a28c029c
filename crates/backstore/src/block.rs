//! A block device as a backstore.
//!
//! The device is opened with `O_EXCL`, which on Linux claims it exclusively (as LIO's iblock
//! does): nobody can mount it or hand it to a second LUN while we serve it. Size comes from
//! `BLKGETSIZE64`; I/O is positional through the page cache; flush is fdatasync, which also
//! sends a cache flush to the device.
//!
//! Unmap uses `fallocate(PUNCH_HOLE | KEEP_SIZE)`, not `BLKDISCARD`: since Linux 4.12 a discard
//! does not promise that the range reads back as zeroes, which the [`Backstore::unmap`]
//! contract requires; a hole punch on a block device deallocates *and* guarantees zeroes, or
//! fails with `EOPNOTSUPP` without writing anything. Then we zero the range with `BLKZEROOUT`
//! (which lets the device do it with WRITE SAME) and report `Ok(false)`.
//!
//! A regular file is accepted too, with the file's length as size and hole punching as unmap,
//! so the block code paths run in tests without root or a spare disk.
//!
//! [`BlockBackstore::open_direct`] opens with `O_DIRECT` instead, for a device several cluster
//! nodes share (`direct` says why and how).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{check_range, direct, sys, Backstore};

/// A block device (or, for tests, a regular file) used as a backstore.
#[derive(Debug)]
pub struct BlockBackstore {
    file: File,
    path: PathBuf,
    /// The device's (or file's) length as the store has it (`refresh_size` follows it).
    size: AtomicU64,
    /// Logical block size of the device; 512 for a regular file.
    logical_block: u32,
    /// Whether `file` is a block device rather than a regular file.
    device: bool,
    /// Whether hole punching is expected to work (see `supports_unmap`).
    can_punch: bool,
    /// Opened with `O_DIRECT`: I/O passes aligned bounce buffers (`direct`).
    direct: bool,
    /// Serializes direct writes that read-modify-write partial device blocks.
    rmw: std::sync::Mutex<()>,
    /// A regular file opened direct whose length is not a whole number of blocks: its last,
    /// partial block goes through this second, buffered descriptor (a device never has one).
    tail: Option<File>,
}

impl BlockBackstore {
    /// Opens the block device (exclusively) or regular file at `path` for reading and writing.
    /// Anything else (directory, character device, …) is `InvalidInput`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::open_with(path.as_ref(), false)
    }

    /// As [`open`](Self::open), but past the page cache (`O_DIRECT`): for a device other
    /// hosts write too (cluster nodes sharing a LUN), where a cache of one's own would serve
    /// stale blocks and could write back after a partner took over.
    pub fn open_direct(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::open_with(path.as_ref(), true)
    }

    fn open_with(path: &Path, direct: bool) -> io::Result<Self> {
        let annotate = |e: io::Error| {
            io::Error::new(e.kind(), format!("block backstore {}: {e}", path.display()))
        };
        let wants_device = std::fs::metadata(path)
            .map_err(annotate)?
            .file_type()
            .is_block_device();
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        let mut flags = 0;
        if wants_device {
            flags |= libc::O_EXCL;
        }
        if direct {
            flags |= libc::O_DIRECT;
        }
        options.custom_flags(flags);
        let file = options.open(path).map_err(annotate)?;
        let meta = file.metadata().map_err(annotate)?;
        let device = meta.file_type().is_block_device();
        if device != wants_device || !(device || meta.is_file()) {
            return Err(annotate(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a block device or regular file",
            )));
        }
        let (size, logical_block, can_punch) = if device {
            let size = sys::block_device_size(&file).map_err(annotate)?;
            let lbs = sys::block_logical_size(&file).map_err(annotate)?;
            if lbs == 0 || !lbs.is_power_of_two() {
                return Err(annotate(io::Error::other(format!(
                    "unexpected logical block size {lbs}"
                ))));
            }
            (size, lbs, device_can_write_zeroes(meta.rdev()))
        } else {
            (meta.len(), 512, sys::probe_punch_hole(&file, meta.len()))
        };
        Ok(BlockBackstore {
            file,
            path: path.to_owned(),
            size: AtomicU64::new(size),
            logical_block,
            device,
            can_punch,
            direct,
            rmw: std::sync::Mutex::new(()),
            tail: match direct && size % u64::from(logical_block) != 0 {
                true => Some(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(path)
                        .map_err(annotate)?,
                ),
                false => None,
            },
        })
    }

    /// The path the device was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's logical block size in bytes (512 for a regular file). A LU built on this
    /// store should not present a smaller block size, or every write becomes read-modify-write.
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block
    }

    /// Whether I/O goes past the page cache (`open_direct`).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Zeroes `offset..offset + len` of the device without deallocating.
    fn zero_device(&self, offset: u64, len: u64) -> io::Result<()> {
        match sys::block_zero_out(&self.file, offset, len) {
            Err(e) if sys::is_unsupported(&e) => self.write_zeroes(offset, len),
            other => other,
        }
    }

    /// Writes zeroes (through the bounce buffers when direct).
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.direct {
            return sys::write_zeroes(&self.file, offset, len);
        }
        let head = self.direct_part(offset, len as usize) as u64;
        direct::write_zeroes(&self.file, self.logical_block, &self.rmw, offset, head)?;
        if head < len {
            sys::write_zeroes(self.tail_file(), offset + head, len - head)?;
        }
        Ok(())
    }

    /// How many bytes of `[offset, offset + len)` lie before the partial last block of a
    /// direct regular file (all of them on a device).
    fn direct_part(&self, offset: u64, len: usize) -> usize {
        if self.tail.is_none() {
            return len;
        }
        let lbs = u64::from(self.logical_block);
        let cut = self.size() / lbs * lbs;
        cut.saturating_sub(offset).min(len as u64) as usize
    }

    fn tail_file(&self) -> &File {
        self.tail.as_ref().unwrap_or(&self.file)
    }
}

/// Whether the device with number `rdev` advertises WRITE ZEROES, which is what a hole punch on
/// a block device needs. Read from sysfs (a partition's queue is its disk's); when sysfs does
/// not say, assume yes and let `unmap` fall back at run time.
fn device_can_write_zeroes(rdev: u64) -> bool {
    // The glibc encoding of dev_t (gnu_dev_major / gnu_dev_minor).
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    let base = format!("/sys/dev/block/{major}:{minor}");
    ["queue", "../queue"]
        .iter()
        .find_map(|dir| {
            std::fs::read_to_string(format!("{base}/{dir}/write_zeroes_max_bytes"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        })
        .is_none_or(|max| max > 0)
}

impl Backstore for BlockBackstore {
    fn kind(&self) -> &'static str {
        "block"
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn refresh_size(&self) -> io::Result<u64> {
        let mut len = if self.device {
            sys::block_device_size(&self.file)?
        } else {
            self.file.metadata()?.len()
        };
        if self.direct && self.tail.is_none() {
            // Opened direct with a whole number of blocks: no buffered descriptor for a
            // partial last block, so a partial block that appeared since is not exposed.
            len -= len % u64::from(self.logical_block);
        }
        self.size.store(len, Ordering::Relaxed);
        Ok(len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !self.direct {
            return sys::read_at(&self.file, self.size(), buf, offset);
        }
        check_range(self.size(), offset, buf.len() as u64)?;
        let (head, tail) = buf.split_at_mut(self.direct_part(offset, buf.len()));
        direct::read_at(&self.file, self.size(), self.logical_block, head, offset)?;
        if !tail.is_empty() {
            let at = offset + head.len() as u64;
            self.tail_file().read_exact_at(tail, at)?;
        }
        Ok(())
    }

    fn read_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        if !self.direct {
            return sys::read_vec(&self.file, self.size(), len, offset);
        }
        check_range(self.size(), offset, len as u64)?;
        let mut v = vec![0u8; len];
        self.read_at(&mut v, offset)?;
        Ok(v)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.direct {
            return sys::write_at(&self.file, self.size(), buf, offset);
        }
        check_range(self.size(), offset, buf.len() as u64)?;
        let (head, tail) = buf.split_at(self.direct_part(offset, buf.len()));
        direct::write_at(
            &self.file,
            self.size(),
            self.logical_block,
            &self.rmw,
            head,
            offset,
        )?;
        if !tail.is_empty() {
            self.tail_file()
                .write_all_at(tail, offset + head.len() as u64)?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool> {
        check_range(self.size(), offset, len)?;
        if len == 0 {
            return Ok(true);
        }
        let end = offset + len;
        if !self.device {
            if sys::try_punch_hole(&self.file, self.can_punch, offset, len)? {
                return Ok(true);
            }
            self.write_zeroes(offset, len)?;
            return Ok(false);
        }
        // The kernel takes only whole logical blocks; zero any partial block at either end by hand.
        let lbs = u64::from(self.logical_block);
        let first = offset.div_ceil(lbs).saturating_mul(lbs).min(end);
        let last = (end / lbs * lbs).max(first);
        if first > offset {
            self.write_zeroes(offset, first - offset)?;
        }
        if last < end {
            self.write_zeroes(last, end - last)?;
        }
        if first == last {
            return Ok(false);
        }
        if sys::try_punch_hole(&self.file, self.can_punch, first, last - first)? {
            return Ok(true);
        }
        self.zero_device(first, last - first)?;
        Ok(false)
    }

    fn supports_unmap(&self) -> bool {
        self.can_punch
    }
}
