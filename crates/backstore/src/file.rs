//! A regular file as a backstore.
//!
//! The file is created sparse, so a large LUN costs no disk space until it is written, and
//! unmap punches holes (`fallocate(PUNCH_HOLE | KEEP_SIZE)`) so thin provisioning really returns
//! space to the file system. All I/O is positional (pread/pwrite), so concurrent commands need no
//! lock. On a file system that cannot punch holes, unmap writes zeroes instead and says so by
//! returning `Ok(false)`; [`Backstore::supports_unmap`] is probed at open, harmlessly, by
//! punching a hole past the end of the file.
//!
//! [`Backstore::read_pieces`] lends the page cache itself through read-only mappings
//! (`mapped.rs`), so that an encrypted file LUN decrypts its reads out of the cache in one pass.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{check_range, mapped::Windows, sys, Backstore, Extent};

/// A regular file used as a (usually sparse) backstore.
#[derive(Debug)]
pub struct FileBackstore {
    file: File,
    path: PathBuf,
    /// The file's length as the store has it (`refresh_size` follows the file).
    size: AtomicU64,
    can_punch: bool,
    pub(crate) windows: Windows,
}

impl FileBackstore {
    /// Opens the file at `path` for reading and writing.
    ///
    /// - Missing and `size` given: created as a sparse file of `size` bytes.
    /// - Missing and no `size`: `NotFound`.
    /// - Existing and `size` larger than the file: extended (sparsely) to `size`.
    /// - Existing and `size` smaller: left alone; a backstore never truncates data.
    ///
    /// The backstore's size is the file's length after this.
    pub fn open(path: impl AsRef<Path>, size: Option<u64>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(size.is_some())
            .truncate(false)
            .open(path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("file backstore {}: {e}", path.display()))
            })?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "file backstore {}: not a regular file (use a block backstore for devices)",
                    path.display()
                ),
            ));
        }
        let mut len = meta.len();
        if let Some(size) = size {
            if size > len {
                file.set_len(size)?;
                len = size;
            }
        }
        let can_punch = sys::probe_punch_hole(&file, len);
        Ok(FileBackstore {
            file,
            path: path.to_owned(),
            size: AtomicU64::new(len),
            can_punch,
            windows: Windows::new(len),
        })
    }

    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the byte at `offset` is allocated (holds data) rather than in a hole.
    pub fn is_mapped(&self, offset: u64) -> io::Result<bool> {
        Ok(self.extent_at(offset)?.mapped)
    }

    /// The run of bytes from `offset` that share its allocation status, found with
    /// `SEEK_DATA`/`SEEK_HOLE`, for GET LBA STATUS. A file system without hole reporting
    /// describes the whole file as mapped, which is always a truthful answer.
    pub fn extent_at(&self, offset: u64) -> io::Result<Extent> {
        // One reading of the size for the whole answer (`refresh_size` may change it).
        let size = self.size();
        check_range(size, offset, 1)?;
        let (mapped, end) = match sys::seek_data(&self.file, offset)? {
            Some(data) if data <= offset => {
                let hole = sys::seek_hole(&self.file, offset)?.unwrap_or(size);
                (true, hole)
            }
            Some(data) => (false, data),
            None => (false, size),
        };
        // The file may have changed length behind our back; keep the answer inside the store.
        let end = end.clamp(offset + 1, size);
        Ok(Extent {
            offset,
            len: end - offset,
            mapped,
        })
    }
}

impl Backstore for FileBackstore {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn refresh_size(&self) -> io::Result<u64> {
        let len = self.file.metadata()?.len();
        if self.size.swap(len, Ordering::Relaxed) != len {
            self.windows.resize(len);
        }
        Ok(len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        sys::read_at(&self.file, self.size(), buf, offset)
    }

    fn read_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        sys::read_vec(&self.file, self.size(), len, offset)
    }

    // Pieces end at window boundaries, multiples of 4096 bytes (the trait's promise).
    fn read_pieces(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> io::Result<bool> {
        check_range(self.size(), offset, len as u64)?;
        self.windows.read(&self.file, offset, len, f)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        sys::write_at(&self.file, self.size(), buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool> {
        check_range(self.size(), offset, len)?;
        if len == 0 {
            return Ok(true);
        }
        if sys::try_punch_hole(&self.file, self.can_punch, offset, len)? {
            return Ok(true);
        }
        sys::write_zeroes(&self.file, offset, len)?;
        Ok(false)
    }

    fn supports_unmap(&self) -> bool {
        self.can_punch
    }

    fn space(&self) -> io::Result<Option<crate::Space>> {
        use std::os::unix::fs::MetadataExt;
        // st_blocks counts 512-byte units whatever the file system's block size.
        let used = self.file.metadata()?.blocks() * 512;
        Ok(Some(crate::Space {
            used,
            available: sys::free_bytes(&self.file)?,
            shared: true,
        }))
    }

    fn anchor(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size(), offset, len)?;
        if len == 0 || sys::try_zero_range(&self.file, offset, len)? {
            return Ok(());
        }
        sys::write_zeroes(&self.file, offset, len)
    }

    fn extent_at(&self, offset: u64) -> io::Result<Option<Extent>> {
        FileBackstore::extent_at(self, offset).map(Some)
    }
}
