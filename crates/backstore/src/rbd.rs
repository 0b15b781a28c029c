//! A Ceph RBD image as a backstore, through librbd's asynchronous API (loaded at run time, see
//! [`ffi`]).
//!
//! * **I/O**: every operation is an `rbd_aio_*` call whose completion runs a callback on a
//!   librbd thread. The synchronous [`Backstore`] methods wait for that callback; the
//!   [`AsyncBackstore`] methods hand it the caller's own completion instead, so no thread waits
//!   while the I/O is in flight (the daemon uses them for READ and WRITE).
//! * **Thin provisioning**: `unmap` is `rbd_aio_write_zeroes` without the thick-provision flag,
//!   which librbd carries out as a discard that removes whole objects and zeroes partial ones
//!   (unlike `rbd_aio_discard`, which skips partial object ranges when
//!   `rbd_skip_partial_discard` is on, its default). So an unmapped range always reads back as
//!   zeroes (LBPRZ holds), and whole objects really go back to the pool. `extent_at` asks
//!   `rbd_diff_iterate2` (from no snapshot, not whole objects) which ranges hold data.
//! * **Coherence across nodes**: librbd's cache is turned off (`rbd_cache = false`): two
//!   Ferrite nodes serving one image must each see the other's completed writes, and a
//!   per-client write-back cache would hide them.
//! * **COMPARE AND WRITE** ([`Backstore::compare_and_write`]): one 512-byte sector goes to
//!   `rbd_aio_compare_and_write`, which the OSD carries out as one compare-extent + write
//!   operation, atomic against every writer of every node. Longer ranges (librbd 16.2 refuses
//!   them with EINVAL) are read, compared and written while this node holds the image's
//!   COMPARE AND WRITE lock, an exclusive RADOS object lock (`rados_lock_exclusive`, with a
//!   lease so that a crashed holder cannot keep it) on the object `ferrite.caw.<image>` in the
//!   image's pool: atomic against every COMPARE AND WRITE of every node, and (through the
//!   device server's range locks) against every command of this node. docs/design.md says why
//!   and what that leaves.
//! * **Time limits**: connecting and every operation are bounded (`client_mount_timeout`,
//!   `rados_mon_op_timeout`, `rados_osd_op_timeout`), so an unreachable cluster is an error,
//!   never a hang.

use std::ffi::{c_int, c_void, CString};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{check_range, AsyncBackstore, Backstore, Done, Extent};

pub mod ffi;

use ffi::{err, lib, Completion, Image, IoCtx, Lib, Rados};

/// How to reach an image: `rbd:POOL/IMAGE` plus the client's settings. Defaults as the `rbd`
/// command has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdOptions {
    pub pool: String,
    pub image: String,
    /// Ceph configuration file (default: `$CEPH_CONF`, then `/etc/ceph/ceph.conf`, as librados
    /// searches).
    pub conf: Option<PathBuf>,
    /// Client id without `client.` (default `admin`).
    pub client_id: Option<String>,
    /// Keyring (default: what the configuration file names, else librados's search path).
    pub keyring: Option<PathBuf>,
    /// Seconds connecting and each operation may take (default 30).
    pub timeout_secs: Option<u32>,
}

impl RbdOptions {
    pub fn new(pool: &str, image: &str) -> Self {
        Self {
            pool: pool.into(),
            image: image.into(),
            conf: None,
            client_id: None,
            keyring: None,
            timeout_secs: None,
        }
    }
}

/// Seconds a cluster operation may take unless configured otherwise.
pub const DEFAULT_TIMEOUT_SECS: u32 = 30;
/// How long a COMPARE AND WRITE lock is good for if its holder vanishes (a lease).
const CAW_LOCK_LEASE_SECS: i64 = 30;
/// The size librbd's compare-and-write accepts (one sector, within one sector).
const CAW_SECTOR: u64 = 512;

fn cstring(what: &str, s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {s:?} contains a NUL byte"),
        )
    })
}

/// An open RBD image.
pub struct RbdBackstore {
    lib: &'static Lib,
    cluster: Rados,
    ioctx: IoCtx,
    image: Image,
    /// The image's size as the store has it (`refresh_size` follows `rbd resize`).
    size: AtomicU64,
    name: String,
    /// `ferrite.caw.<image>`: the object whose RADOS lock serializes multi-sector COMPARE AND
    /// WRITE across nodes.
    caw_oid: CString,
    caw_cookie_prefix: String,
    caw_seq: AtomicU64,
    timeout: Duration,
}

// SAFETY: librados and librbd handles are documented thread-safe (every call may come from any
// thread; librbd serializes internally), and the handles live until `Drop`.
unsafe impl Send for RbdBackstore {}
unsafe impl Sync for RbdBackstore {}

impl fmt::Debug for RbdBackstore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RbdBackstore({}, {} bytes)", self.name, self.size())
    }
}

/// Tears a half-opened client down (connect failed, image missing).
struct Partial {
    lib: &'static Lib,
    cluster: Rados,
    ioctx: IoCtx,
}

impl Drop for Partial {
    fn drop(&mut self) {
        // SAFETY: handles created by this module and not yet owned by an RbdBackstore.
        unsafe {
            if !self.ioctx.is_null() {
                (self.lib.rados_ioctx_destroy)(self.ioctx);
            }
            if !self.cluster.is_null() {
                (self.lib.rados_shutdown)(self.cluster);
            }
        }
    }
}

impl RbdBackstore {
    /// Connect to the cluster and open the image. A missing library, configuration, pool or
    /// image, refused credentials or an unreachable cluster are errors that say which (after
    /// at most the timeout for the last).
    pub fn open(o: &RbdOptions) -> io::Result<Self> {
        let lib = lib()?;
        let name = format!("{}/{}", o.pool, o.image);
        if o.pool.is_empty() || o.image.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("rbd:{name}: expected POOL/IMAGE"),
            ));
        }
        let id = o.client_id.as_deref().unwrap_or("admin");
        let id = id.strip_prefix("client.").unwrap_or(id);
        let cid = cstring("client id", id)?;
        let timeout = o.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS).max(1);
        let mut p = Partial {
            lib,
            cluster: ptr::null_mut(),
            ioctx: ptr::null_mut(),
        };
        // SAFETY: FFI calls with valid out-pointers and NUL-terminated strings that outlive
        // them; `p` frees the handles on every error path.
        unsafe {
            let r = (lib.rados_create)(&mut p.cluster, cid.as_ptr());
            if r < 0 {
                return Err(err("rados_create", r.into()));
            }
            let conf = match &o.conf {
                Some(c) => Some(cstring("ceph.conf path", &c.display().to_string())?),
                None => None,
            };
            let r = (lib.rados_conf_read_file)(
                p.cluster,
                conf.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
            );
            if r < 0 {
                let which = match &o.conf {
                    Some(c) => c.display().to_string(),
                    None => "$CEPH_CONF or /etc/ceph/ceph.conf".into(),
                };
                return Err(err(
                    &format!("rbd:{name}: Ceph configuration {which}"),
                    r.into(),
                ));
            }
            let t = timeout.to_string();
            let mut settings: Vec<(&str, String)> = vec![
                ("client_mount_timeout", t.clone()),
                ("rados_mon_op_timeout", t.clone()),
                ("rados_osd_op_timeout", t),
                ("rbd_cache", "false".into()),
            ];
            if let Some(k) = &o.keyring {
                settings.push(("keyring", k.display().to_string()));
            }
            for (k, v) in settings {
                let (ck, cv) = (cstring("option", k)?, cstring(k, &v)?);
                let r = (lib.rados_conf_set)(p.cluster, ck.as_ptr(), cv.as_ptr());
                if r < 0 {
                    return Err(err(&format!("rbd:{name}: setting {k}"), r.into()));
                }
            }
            let r = (lib.rados_connect)(p.cluster);
            if r < 0 {
                return Err(err(
                    &format!("rbd:{name}: connecting to the Ceph cluster as client.{id}"),
                    r.into(),
                ));
            }
            let pool = cstring("pool", &o.pool)?;
            let r = (lib.rados_ioctx_create)(p.cluster, pool.as_ptr(), &mut p.ioctx);
            if r < 0 {
                return Err(err(&format!("rbd:{name}: pool {}", o.pool), r.into()));
            }
            let img = cstring("image", &o.image)?;
            let mut image: Image = ptr::null_mut();
            let r = (lib.rbd_open)(p.ioctx, img.as_ptr(), &mut image, ptr::null());
            if r < 0 {
                return Err(err(&format!("rbd:{name}: image {}", o.image), r.into()));
            }
            let mut size = 0u64;
            let r = (lib.rbd_get_size)(image, &mut size);
            if r < 0 {
                (lib.rbd_close)(image);
                return Err(err(&format!("rbd:{name}: size"), r.into()));
            }
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let s = RbdBackstore {
                lib,
                cluster: p.cluster,
                ioctx: p.ioctx,
                image,
                size: AtomicU64::new(size),
                caw_oid: cstring("image", &format!("ferrite.caw.{}", o.image))?,
                caw_cookie_prefix: format!("{}-{}", host.trim(), std::process::id()),
                caw_seq: AtomicU64::new(0),
                timeout: Duration::from_secs(timeout.into()),
                name,
            };
            std::mem::forget(p);
            Ok(s)
        }
    }

    /// `POOL/IMAGE`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Start an operation: `start` gets a completion whose callback calls `done` with the
    /// operation's return value. Whatever `start` points librbd at must stay valid until
    /// `done` runs (callers move their buffers into `done` or wait for it).
    fn submit(&self, start: impl FnOnce(Completion) -> isize, done: Box<dyn FnOnce(isize) + Send>) {
        let arg = Box::into_raw(Box::new(done)).cast::<c_void>();
        let mut c: Completion = ptr::null_mut();
        // SAFETY: `arg` is a leaked box that `on_complete` (or the error path here) reclaims
        // exactly once.
        unsafe {
            let r = (self.lib.rbd_aio_create_completion)(arg, on_complete, &mut c);
            if r < 0 {
                let done = Box::from_raw(arg.cast::<Box<dyn FnOnce(isize) + Send>>());
                done(r as isize);
                return;
            }
            let r = start(c);
            if r < 0 {
                // Refused before it was queued: librbd will not call back.
                (self.lib.rbd_aio_release)(c);
                let done = Box::from_raw(arg.cast::<Box<dyn FnOnce(isize) + Send>>());
                done(r);
            }
        }
    }

    /// Run an operation and wait for it (the synchronous [`Backstore`] methods). The timeouts
    /// set at open bound the wait.
    fn wait(&self, start: impl FnOnce(Completion) -> isize) -> isize {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            start,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(-(libc::EIO as isize))
    }

    fn read_into(&self, ptr: *mut u8, len: usize, offset: u64) -> io::Result<()> {
        let r = self.wait(|c| unsafe {
            // SAFETY: the caller's buffer outlives the wait.
            (self.lib.rbd_aio_read)(self.image, offset, len, ptr.cast(), c) as isize
        });
        check_len("rbd read", r, len)
    }

    /// Take the image's COMPARE AND WRITE lock (see the module documentation); the returned
    /// cookie releases it.
    fn caw_lock(&self) -> io::Result<CString> {
        let seq = self.caw_seq.fetch_add(1, Ordering::Relaxed);
        let cookie = cstring("cookie", &format!("{}-{seq}", self.caw_cookie_prefix))?;
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            let mut lease = libc::timeval {
                tv_sec: CAW_LOCK_LEASE_SECS,
                tv_usec: 0,
            };
            // SAFETY: NUL-terminated strings and a timeval that outlive the call.
            let r = unsafe {
                (self.lib.rados_lock_exclusive)(
                    self.ioctx,
                    self.caw_oid.as_ptr(),
                    c"caw".as_ptr(),
                    cookie.as_ptr(),
                    c"ferrite COMPARE AND WRITE".as_ptr(),
                    &mut lease,
                    0,
                )
            };
            match r {
                0 => return Ok(cookie),
                r if (r == -libc::EBUSY || r == -libc::EEXIST) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                r => return Err(err("rbd COMPARE AND WRITE lock", r.into())),
            }
        }
    }

    fn caw_unlock(&self, cookie: &CString) {
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            (self.lib.rados_unlock)(
                self.ioctx,
                self.caw_oid.as_ptr(),
                c"caw".as_ptr(),
                cookie.as_ptr(),
            )
        };
        if r < 0 {
            // The lease ends it anyway.
            tracing::warn!(image = %self.name, errno = -r, "releasing the COMPARE AND WRITE lock failed (its lease ends it)");
        }
    }
}

/// librbd's completion callback: hand the result to the operation's `done`. Never unwinds into
/// C.
unsafe extern "C" fn on_complete(c: Completion, arg: *mut c_void) {
    let Ok(lib) = lib() else { return };
    // SAFETY: `c` is the completion librbd calls back for, released here once (as QEMU's rbd
    // driver does); `arg` is the box `submit` leaked for it.
    let r = unsafe {
        let r = (lib.rbd_aio_get_return_value)(c);
        (lib.rbd_aio_release)(c);
        r
    };
    let done = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce(isize) + Send>>()) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(r)));
}

fn check(what: &str, r: isize) -> io::Result<()> {
    if r < 0 {
        Err(err(what, r as i64))
    } else {
        Ok(())
    }
}

/// A read or write must move exactly `len` bytes.
fn check_len(what: &str, r: isize, len: usize) -> io::Result<()> {
    check(what, r)?;
    if r as usize != len && !(what.ends_with("write") && r == 0) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what}: {r} of {len} bytes"),
        ));
    }
    Ok(())
}

impl Drop for RbdBackstore {
    fn drop(&mut self) {
        // SAFETY: the handles were opened in `open` and nothing else uses them now (no
        // operation is in flight: every one holds a borrow or waits, and async ones hold an
        // Arc of the store).
        unsafe {
            let c = self.wait(|c| (self.lib.rbd_aio_flush)(self.image, c) as isize);
            if c < 0 {
                tracing::warn!(image = %self.name, errno = -c, "flush at close failed");
            }
            (self.lib.rbd_close)(self.image);
            (self.lib.rados_ioctx_destroy)(self.ioctx);
            (self.lib.rados_shutdown)(self.cluster);
        }
    }
}

impl Backstore for RbdBackstore {
    fn kind(&self) -> &'static str {
        "rbd"
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn refresh_size(&self) -> io::Result<u64> {
        let mut size = 0u64;
        // SAFETY: the image handle lives until Drop; librbd writes one u64 through the pointer
        // (and refreshes its view of the image header first when another client changed it).
        let r = unsafe { (self.lib.rbd_get_size)(self.image, &mut size) };
        check("size", r as isize)?;
        self.size.store(size, Ordering::Relaxed);
        Ok(size)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.read_into(buf.as_mut_ptr(), buf.len(), offset)
    }

    fn read_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        check_range(self.size(), offset, len as u64)?;
        let mut v = Vec::with_capacity(len);
        if len > 0 {
            self.read_into(v.as_mut_ptr(), len, offset)?;
        }
        // SAFETY: librbd filled all `len` bytes (holes as zeroes), checked by `read_into`.
        unsafe { v.set_len(len) };
        Ok(v)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let r = self.wait(|c| unsafe {
            // SAFETY: `buf` outlives the wait.
            (self.lib.rbd_aio_write)(self.image, offset, buf.len(), buf.as_ptr().cast(), c) as isize
        });
        check_len("rbd write", r, buf.len())
    }

    fn flush(&self) -> io::Result<()> {
        let r = self.wait(|c| unsafe { (self.lib.rbd_aio_flush)(self.image, c) as isize });
        check("rbd flush", r)
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool> {
        check_range(self.size(), offset, len)?;
        // write_zeroes takes a size_t; the range is inside the image, so it fits a u64 and,
        // on 64-bit Linux, a usize.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(1 << 30);
            let r = self.wait(|c| unsafe {
                (self.lib.rbd_aio_write_zeroes)(self.image, offset + done, n as usize, c, 0, 0)
                    as isize
            });
            check("rbd write zeroes (discard)", r)?;
            done += n;
        }
        Ok(true)
    }

    fn supports_unmap(&self) -> bool {
        true
    }

    fn extent_at(&self, offset: u64) -> io::Result<Option<Extent>> {
        // One reading of the size for the whole answer (`refresh_size` may change it).
        let size = self.size();
        check_range(size, offset, 1)?;
        struct Walk {
            start: u64,
            /// The first extent that holds data at or after `start`: (offset, len).
            first: Option<(u64, u64)>,
        }
        unsafe extern "C" fn cb(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the `Walk` below, alive for the call.
            let w = unsafe { &mut *arg.cast::<Walk>() };
            if exists == 0 || len == 0 {
                return 0;
            }
            let end = off.saturating_add(len as u64);
            match &mut w.first {
                None => {
                    w.first = Some((off, end - off));
                    0
                }
                // Adjacent data extents join the run; the first gap ends the walk.
                Some((o, l)) if *o + *l == off => {
                    *l += len as u64;
                    0
                }
                Some(_) => STOP,
            }
        }
        /// What the callback returns to end the walk: librbd stops on a negative value and
        /// passes it back.
        const STOP: c_int = -libc::ECANCELED;
        // Without the object map (images for active/active nodes have none) the walk lists
        // every object it covers, one RADOS operation each: look at most this far ahead. A
        // shorter run is as true, and GET LBA STATUS asks again from where it ends.
        const WINDOW: u64 = 1 << 30;
        let end = size.min(offset.saturating_add(WINDOW));
        let mut w = Walk {
            start: offset,
            first: None,
        };
        // SAFETY: `w` outlives the synchronous walk; the callback only touches it.
        let r = unsafe {
            (self.lib.rbd_diff_iterate2)(
                self.image,
                ptr::null(),
                offset,
                end - offset,
                1,
                0,
                cb,
                (&mut w as *mut Walk).cast(),
            )
        };
        if r < 0 && r != STOP {
            return Err(err("rbd diff iterate", r.into()));
        }
        let e = match w.first {
            // Data at `offset`: the run of data from there.
            Some((o, l)) if o <= w.start => Extent {
                offset,
                len: o + l - offset,
                mapped: true,
            },
            // A hole up to the next data.
            Some((o, _)) => Extent {
                offset,
                len: o - offset,
                mapped: false,
            },
            None => Extent {
                offset,
                len: end - offset,
                mapped: false,
            },
        };
        Ok(Some(e))
    }

    fn compare_and_write(
        &self,
        offset: u64,
        compare: &[u8],
        data: &[u8],
    ) -> io::Result<Option<u64>> {
        let len = compare.len() as u64;
        if data.len() != compare.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "compare and write: buffers of different lengths",
            ));
        }
        check_range(self.size(), offset, len)?;
        if len == 0 {
            return Ok(None);
        }
        if len <= CAW_SECTOR && offset / CAW_SECTOR == (offset + len - 1) / CAW_SECTOR {
            // One sector: the OSD compares and writes in one operation.
            let mut mismatch = Box::new(0u64);
            let mm: *mut u64 = &mut *mismatch;
            let r = self.wait(|c| unsafe {
                (self.lib.rbd_aio_compare_and_write)(
                    self.image,
                    offset,
                    compare.len(),
                    compare.as_ptr().cast(),
                    data.as_ptr().cast(),
                    c,
                    mm,
                    0,
                )
            });
            if r == -(libc::EILSEQ as isize) {
                // librbd 16.2 reports the offset within the buffer (measured); an image
                // offset, should another version give one, is turned into that.
                let m = *mismatch;
                let at = if m < len {
                    m
                } else {
                    m.checked_sub(offset).filter(|&d| d < len).unwrap_or(0)
                };
                return Ok(Some(at));
            }
            check("rbd compare and write", r)?;
            return Ok(None);
        }
        let cookie = self.caw_lock()?;
        let result = (|| {
            let medium = self.read_vec(compare.len(), offset)?;
            if let Some(i) = compare.iter().zip(&medium).position(|(a, b)| a != b) {
                return Ok(Some(i as u64));
            }
            self.write_at(data, offset)?;
            Ok(None)
        })();
        self.caw_unlock(&cookie);
        result
    }

    fn as_async(&self) -> Option<&dyn AsyncBackstore> {
        Some(self)
    }
}

impl AsyncBackstore for RbdBackstore {
    fn read_async(&self, offset: u64, len: usize, done: Done<Vec<u8>>) {
        if let Err(e) = check_range(self.size(), offset, len as u64) {
            return done(Err(e));
        }
        if len == 0 {
            return done(Ok(Vec::new()));
        }
        let mut v: Vec<u8> = Vec::with_capacity(len);
        let p = v.as_mut_ptr();
        self.submit(
            |c| unsafe {
                // SAFETY: `v`'s heap buffer moves into the callback below and lives until it.
                (self.lib.rbd_aio_read)(self.image, offset, len, p.cast(), c) as isize
            },
            Box::new(move |r| {
                done(check_len("rbd read", r, len).map(|()| {
                    // SAFETY: librbd filled all `len` bytes.
                    unsafe { v.set_len(len) };
                    v
                }))
            }),
        );
    }

    fn write_async(&self, data: Vec<u8>, offset: u64, done: Done<Vec<u8>>) {
        if let Err(e) = check_range(self.size(), offset, data.len() as u64) {
            return done(Err(e));
        }
        if data.is_empty() {
            return done(Ok(data));
        }
        let (p, len) = (data.as_ptr(), data.len());
        self.submit(
            |c| unsafe {
                // SAFETY: `data` moves into the callback below and lives until it.
                (self.lib.rbd_aio_write)(self.image, offset, len, p.cast(), c) as isize
            },
            Box::new(move |r| done(check_len("rbd write", r, len).map(|()| data))),
        );
    }

    fn flush_async(&self, done: Done<()>) {
        self.submit(
            |c| unsafe { (self.lib.rbd_aio_flush)(self.image, c) as isize },
            Box::new(move |r| done(check("rbd flush", r))),
        );
    }
}
