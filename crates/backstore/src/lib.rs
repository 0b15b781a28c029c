//! Backstores: the storage a logical unit is built on. A backstore only moves bytes at byte
//! offsets; it never parses CDBs (see ARCHITECTURE.md). Every implementation passes the same
//! conformance suite (`tests/conformance.rs`).
//!
//! Three implementations, one contract:
//! - [`RamBackstore`]: a sparse RAM disk. Memory is committed per 1 MiB chunk on first write,
//!   so a 1 GiB test LUN costs almost nothing, and each chunk has its own lock so commands on
//!   different chunks never contend.
//! - [`FileBackstore`]: a regular (usually sparse) file. Unmap punches holes, so thin
//!   provisioning really returns space to the file system.
//! - [`BlockBackstore`]: a block device, opened exclusively as LIO does. It also accepts a
//!   regular file so it can be tested without root or a spare disk.
//!
//! Why byte offsets and not LBAs: the logical block size is a property of the LU (the device
//! server may present 512 or 4096 byte blocks over the same store); the backstore only checks
//! that a range lies inside it. All range arithmetic uses `checked_add`, so an LBA + length
//! near `u64::MAX` from a peer is an `InvalidInput` error, never an overflow or a panic.
//!
//! [`RbdBackstore`] is a Ceph RBD image, reached through librbd loaded at run time (`rbd.rs`);
//! it also offers [`AsyncBackstore`], so that its I/O can be in flight without a thread waiting
//! for each.
//!
//! [`EncryptedBackstore`] wraps any of them and stores every logical block encrypted
//! (AES-256-XTS; `crypt.rs` says why and how).
//!
//! This crate is Linux-only: hole punching, `SEEK_DATA` and the `BLK*` ioctls have no portable
//! equivalent.

use std::io;

mod block;
mod crypt;
mod direct;
pub mod durable;
mod file;
mod mapped;
mod ram;
pub mod rbd;
mod sys;

pub use block::BlockBackstore;
pub use crypt::{EncryptedBackstore, KeyFileKey, KeyOrigin};
pub use file::FileBackstore;
pub use ram::RamBackstore;
pub use rbd::{RbdBackstore, RbdOptions};

/// Storage behind a logical unit. All methods take `&self` so several commands can run
/// concurrently on one LUN; implementations use positional I/O (pread/pwrite) or their own locking.
pub trait Backstore: Send + Sync + std::fmt::Debug {
    /// Short kind name for logs and the CLI: "ram", "file", "block", "rbd".
    fn kind(&self) -> &'static str;
    /// Capacity in bytes.
    fn size(&self) -> u64;
    /// Look at the underlying storage's length again (a file or block device the operator
    /// grew or shrank, an RBD image resized), make it the store's [`Backstore::size`] from
    /// now on, and return it. The default: a store whose size never changes (RAM). Nothing is
    /// ever truncated or extended here; the store only follows.
    fn refresh_size(&self) -> io::Result<u64> {
        Ok(self.size())
    }
    /// Fill `buf` from `offset`. Reading past `size()` is an error (`InvalidInput`).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Read `len` bytes from `offset` into a new buffer. Implementations fill it without
    /// zeroing it first (the read is the only pass over the memory); same errors as `read_at`.
    fn read_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_at(&mut v, offset)?;
        Ok(v)
    }
    /// For a store whose data is in memory (the RAM disk's chunks, a file's page cache): call
    /// `f(n, piece)` for consecutive pieces of `offset..offset + len`, in order and covering it,
    /// with the stored bytes themselves (`None`: `n` bytes that read as zeroes), and return
    /// `Ok(true)`. Pieces end only where the range does or at multiples of 4096 bytes from the
    /// start of the store, so a range made of whole logical blocks comes in whole blocks.
    /// `Ok(false)` (the default): the store cannot, and the caller reads into a buffer instead;
    /// `Ok(false)` may also come after calls to `f`, when the store found the bytes it lent
    /// unreadable (a file truncated under its mapping), and the caller then discards what `f`
    /// saw. This lets a wrapper that transforms the data on its way out (decryption) make one
    /// pass over it instead of a copy and a pass. Same errors as `read_at`.
    fn read_pieces(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> io::Result<bool> {
        let _ = (offset, len, f);
        Ok(false)
    }
    /// The other way round from [`Backstore::read_pieces`]: call `f(at, piece)` for
    /// consecutive pieces of `offset..offset + len`, in order and covering it, `at` counted
    /// from `offset`, with the store's own memory for those bytes, which `f` must fill
    /// entirely (pieces end as [`Backstore::read_pieces`]'s do); `Ok(true)` once done. `Ok(false)` (the default): the store cannot, and the
    /// caller writes a buffer instead. Same errors as `write_at`.
    fn write_pieces(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, &mut [u8]),
    ) -> io::Result<bool> {
        let _ = (offset, len, f);
        Ok(false)
    }
    /// Write all of `buf` at `offset`. Writing past `size()` is an error (`InvalidInput`).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable (fdatasync for files and block devices).
    fn flush(&self) -> io::Result<()>;
    /// Deallocate a byte range so it reads back as zeroes (hole punch / discard).
    /// Returns `Ok(false)` when the backstore could not deallocate; the range was then written
    /// with zeroes instead, so after any `Ok` the range reads back as zeroes (which is what lets
    /// the device server report LBPRZ). A range past `size()` is an error (`InvalidInput`).
    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool>;
    /// Whether `unmap` can really deallocate space (thin provisioning).
    fn supports_unmap(&self) -> bool;
    /// Make a byte range read back as zeroes while keeping storage allocated for it (an
    /// anchored range, SBC-4 §4.7.2: later writes to it cannot fail for lack of space). The
    /// default writes the zeroes. A range past `size()` is an error (`InvalidInput`).
    fn anchor(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size(), offset, len)?;
        const STEP: u64 = 1 << 20;
        let zeroes = vec![0u8; STEP.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = STEP.min(len - done);
            self.write_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
    /// Allocated and still allocatable space, for stores that can tell (`Ok(None)`: cannot).
    fn space(&self) -> io::Result<Option<Space>> {
        Ok(None)
    }
    /// The run of bytes from `offset` that share its allocation status, for GET LBA STATUS.
    /// `Ok(None)` means the backstore cannot tell (the device server then reports the range as
    /// "mapped or unknown", which is always true). `offset` past the end is `InvalidInput`.
    fn extent_at(&self, offset: u64) -> io::Result<Option<Extent>> {
        check_range(self.size(), offset, 1)?;
        Ok(None)
    }
    /// Compare `compare` with the bytes at `offset` and, only if they are equal, write `data`
    /// (of the same length) there: `Ok(None)` written, `Ok(Some(i))` not written because byte
    /// `i` of the range differs. The caller excludes this node's other commands on the range
    /// (the device server's range lock); a store shared by several nodes makes it atomic
    /// against theirs too (SBC-4 §5.3). The default reads, compares and writes.
    fn compare_and_write(
        &self,
        offset: u64,
        compare: &[u8],
        data: &[u8],
    ) -> io::Result<Option<u64>> {
        if data.len() != compare.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "compare and write: buffers of different lengths",
            ));
        }
        let medium = self.read_vec(compare.len(), offset)?;
        if let Some(i) = compare.iter().zip(&medium).position(|(a, b)| a != b) {
            return Ok(Some(i as u64));
        }
        self.write_at(data, offset)?;
        Ok(None)
    }
    /// The asynchronous interface, for stores whose operations complete on threads of their
    /// own (`None`: only the synchronous methods).
    fn as_async(&self) -> Option<&dyn AsyncBackstore> {
        None
    }
    /// Whether every block is stored encrypted, so that [`Backstore::crypto_erase`] works.
    fn encrypted(&self) -> bool {
        false
    }
    /// Replace the key the data is encrypted with by a new one, durably, and forget the old
    /// one: every block written before reads as noise from now on (SBC-4 §4.11.4 crypto
    /// erase). `Unsupported` where nothing is encrypted.
    fn crypto_erase(&self) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the backstore is not encrypted",
        ))
    }
}

/// Called once with an asynchronous operation's result, on whatever thread completed it.
pub type Done<T> = Box<dyn FnOnce(io::Result<T>) + Send>;

/// Operations that start now and report later through a [`Done`], so that a caller need not
/// park a thread per operation in flight. Same ranges, errors and meaning as the synchronous
/// [`Backstore`] methods of the same name; `done` may run before the method returns (an error
/// found at once) or on another thread.
pub trait AsyncBackstore: Send + Sync {
    fn read_async(&self, offset: u64, len: usize, done: Done<Vec<u8>>);
    /// Write `data` at `offset`; `done` gets the buffer back for reuse (what it then holds is
    /// unspecified: an encrypting store hands back the ciphertext).
    fn write_async(&self, data: Vec<u8>, offset: u64, done: Done<Vec<u8>>);
    fn flush_async(&self, done: Done<()>);
}

/// How much storage a thin backstore holds and could still get (the Logical Block
/// Provisioning log page's resource counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes allocated to this store.
    pub used: u64,
    /// Bytes that could still be allocated to it.
    pub available: u64,
    /// `available` is shared with others (a file system's free space), not set aside for this
    /// store alone.
    pub shared: bool,
}

/// A run of bytes that share one allocation status, as GET LBA STATUS reports them: `mapped`
/// bytes hold data, unmapped bytes are deallocated and read as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte of the run.
    pub offset: u64,
    /// Length of the run in bytes; at least 1, and the run never extends past the store.
    pub len: u64,
    /// Whether the run is allocated.
    pub mapped: bool,
}

/// Checks that `offset..offset + len` lies inside a store of `size` bytes, without overflowing.
pub(crate) fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("byte range {offset}+{len} is outside the backstore ({size} bytes)"),
        )),
    }
}

/// Futures over [`AsyncBackstore`] operations, for callers that are `async` (the device
/// server's READ and WRITE path). No runtime is assumed: the operation's completion wakes
/// whatever executor polls the future. Dropping a future does not cancel its operation (the
/// store owns the operation's buffers until it completes).
pub mod aio {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::task::{Context, Poll, Waker};

    use crate::{AsyncBackstore, Done};

    struct Slot<T> {
        result: Option<io::Result<T>>,
        waker: Option<Waker>,
    }

    /// The result of one operation, once its completion has run.
    pub struct Pending<T>(Arc<Mutex<Slot<T>>>);

    fn pending<T: Send + 'static>() -> (Pending<T>, Done<T>) {
        let slot = Arc::new(Mutex::new(Slot {
            result: None,
            waker: None,
        }));
        let theirs = slot.clone();
        let done: Done<T> = Box::new(move |r| {
            let waker = {
                let mut s = theirs.lock().unwrap_or_else(PoisonError::into_inner);
                s.result = Some(r);
                s.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        });
        (Pending(slot), done)
    }

    impl<T> Future for Pending<T> {
        type Output = io::Result<T>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            match s.result.take() {
                Some(r) => Poll::Ready(r),
                None => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    /// [`AsyncBackstore::read_async`] as a future.
    pub fn read(store: &dyn AsyncBackstore, offset: u64, len: usize) -> Pending<Vec<u8>> {
        let (p, done) = pending();
        store.read_async(offset, len, done);
        p
    }

    /// [`AsyncBackstore::write_async`] as a future (it yields the buffer back).
    pub fn write(store: &dyn AsyncBackstore, data: Vec<u8>, offset: u64) -> Pending<Vec<u8>> {
        let (p, done) = pending();
        store.write_async(data, offset, done);
        p
    }

    /// [`AsyncBackstore::flush_async`] as a future.
    pub fn flush(store: &dyn AsyncBackstore) -> Pending<()> {
        let (p, done) = pending();
        store.flush_async(done);
        p
    }
}
