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

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{check_range, sys, Backstore};

/// A block device (or, for tests, a regular file) used as a backstore.
#[derive(Debug)]
pub struct BlockBackstore {
    file: File,
    path: PathBuf,
    size: u64,
    /// Logical block size of the device; 512 for a regular file.
    logical_block: u32,
    /// Whether `file` is a block device rather than a regular file.
    device: bool,
    /// Whether hole punching is expected to work (see `supports_unmap`).
    can_punch: bool,
}

impl BlockBackstore {
    /// Opens the block device (exclusively) or regular file at `path` for reading and writing.
    /// Anything else (directory, character device, …) is `InvalidInput`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let annotate = |e: io::Error| {
            io::Error::new(e.kind(), format!("block backstore {}: {e}", path.display()))
        };
        let wants_device = std::fs::metadata(path)
            .map_err(annotate)?
            .file_type()
            .is_block_device();
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if wants_device {
            options.custom_flags(libc::O_EXCL);
        }
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
            size,
            logical_block,
            device,
            can_punch,
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

    /// Zeroes `offset..offset + len` of the device without deallocating.
    fn zero_device(&self, offset: u64, len: u64) -> io::Result<()> {
        match sys::block_zero_out(&self.file, offset, len) {
            Err(e) if sys::is_unsupported(&e) => sys::write_zeroes(&self.file, offset, len),
            other => other,
        }
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
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        sys::read_at(&self.file, self.size, buf, offset)
    }

    fn read_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        sys::read_vec(&self.file, self.size, len, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        sys::write_at(&self.file, self.size, buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool> {
        check_range(self.size, offset, len)?;
        if len == 0 {
            return Ok(true);
        }
        let end = offset + len;
        if !self.device {
            if sys::try_punch_hole(&self.file, self.can_punch, offset, len)? {
                return Ok(true);
            }
            sys::write_zeroes(&self.file, offset, len)?;
            return Ok(false);
        }
        // The kernel takes only whole logical blocks; zero any partial block at either end by hand.
        let lbs = u64::from(self.logical_block);
        let first = offset.div_ceil(lbs).saturating_mul(lbs).min(end);
        let last = (end / lbs * lbs).max(first);
        if first > offset {
            sys::write_zeroes(&self.file, offset, first - offset)?;
        }
        if last < end {
            sys::write_zeroes(&self.file, last, end - last)?;
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
