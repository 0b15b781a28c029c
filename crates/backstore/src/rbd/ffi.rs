//! librados and librbd, loaded at run time with `dlopen` (Debian `librbd1`, which pulls in
//! `librados2`): one binary serves RBD LUNs where Ceph's libraries are installed and everything
//! else where they are not, and building needs no Ceph `-dev` package (see docs/design.md,
//! "Ceph RBD backstore").
//!
//! The signatures are written here by hand from `rados/librados.h` and `rbd/librbd.h` of Ceph
//! 16.2 (pacific); every function used has had the same C signature since Ceph 15.2 (octopus),
//! the first release with `rbd_aio_write_zeroes`. Only the calls Ferrite makes are declared.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::io;
use std::sync::OnceLock;

pub type Rados = *mut c_void;
pub type IoCtx = *mut c_void;
pub type Image = *mut c_void;
pub type Completion = *mut c_void;
/// `rbd_callback_t`: called once per completion, on a librbd thread.
pub type Callback = unsafe extern "C" fn(Completion, *mut c_void);
/// The `rbd_diff_iterate2` callback: (offset, length, exists, arg); non-zero stops the walk.
pub type DiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// The entry points, resolved once per process.
pub struct Lib {
    pub rados_create: unsafe extern "C" fn(*mut Rados, *const c_char) -> c_int,
    pub rados_conf_read_file: unsafe extern "C" fn(Rados, *const c_char) -> c_int,
    pub rados_conf_set: unsafe extern "C" fn(Rados, *const c_char, *const c_char) -> c_int,
    pub rados_connect: unsafe extern "C" fn(Rados) -> c_int,
    pub rados_shutdown: unsafe extern "C" fn(Rados),
    pub rados_ioctx_create: unsafe extern "C" fn(Rados, *const c_char, *mut IoCtx) -> c_int,
    pub rados_ioctx_destroy: unsafe extern "C" fn(IoCtx),
    /// (ioctx, oid, lock name, cookie, description, duration or NULL, flags)
    pub rados_lock_exclusive: unsafe extern "C" fn(
        IoCtx,
        *const c_char,
        *const c_char,
        *const c_char,
        *const c_char,
        *mut libc::timeval,
        u8,
    ) -> c_int,
    /// (ioctx, oid, lock name, cookie)
    pub rados_unlock:
        unsafe extern "C" fn(IoCtx, *const c_char, *const c_char, *const c_char) -> c_int,
    /// (ioctx, image name, image out, snapshot name or NULL)
    pub rbd_open: unsafe extern "C" fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int,
    pub rbd_close: unsafe extern "C" fn(Image) -> c_int,
    pub rbd_get_size: unsafe extern "C" fn(Image, *mut u64) -> c_int,
    pub rbd_aio_create_completion:
        unsafe extern "C" fn(*mut c_void, Callback, *mut Completion) -> c_int,
    pub rbd_aio_get_return_value: unsafe extern "C" fn(Completion) -> isize,
    pub rbd_aio_release: unsafe extern "C" fn(Completion),
    pub rbd_aio_read: unsafe extern "C" fn(Image, u64, usize, *mut c_char, Completion) -> c_int,
    pub rbd_aio_write: unsafe extern "C" fn(Image, u64, usize, *const c_char, Completion) -> c_int,
    pub rbd_aio_flush: unsafe extern "C" fn(Image, Completion) -> c_int,
    pub rbd_aio_discard: unsafe extern "C" fn(Image, u64, u64, Completion) -> c_int,
    /// (image, offset, length, completion, zero flags, op flags)
    pub rbd_aio_write_zeroes:
        unsafe extern "C" fn(Image, u64, usize, Completion, c_int, c_int) -> c_int,
    /// (image, offset, length, compare buffer, write buffer, completion, mismatch offset out,
    /// op flags)
    pub rbd_aio_compare_and_write: unsafe extern "C" fn(
        Image,
        u64,
        usize,
        *const c_char,
        *const c_char,
        Completion,
        *mut u64,
        c_int,
    ) -> isize,
    /// (image, from snapshot or NULL, offset, length, include parent, whole object, callback,
    /// arg)
    pub rbd_diff_iterate2: unsafe extern "C" fn(
        Image,
        *const c_char,
        u64,
        u64,
        u8,
        u8,
        DiffCallback,
        *mut c_void,
    ) -> c_int,
}

// SAFETY: the struct holds only function pointers into libraries that are never unloaded.
unsafe impl Send for Lib {}
unsafe impl Sync for Lib {}

const LIBRADOS: &CStr = c"librados.so.2";
const LIBRBD: &CStr = c"librbd.so.1";

/// The loaded libraries, or why they could not be loaded (the same answer for the life of the
/// process).
pub fn lib() -> io::Result<&'static Lib> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    match LIB.get_or_init(load) {
        Ok(l) => Ok(l),
        Err(e) => Err(io::Error::new(io::ErrorKind::Unsupported, e.clone())),
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

fn open(name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: a plain dlopen of a NUL-terminated name; the handle is never closed, so the
    // symbols stay valid for the life of the process.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        Err(format!(
            "cannot load {} ({}): RBD LUNs need Ceph's client libraries \
             (Debian package librbd1)",
            name.to_string_lossy(),
            dl_error()
        ))
    } else {
        Ok(h)
    }
}

/// A symbol's address as the function pointer type `F`.
///
/// # Safety
/// `F` must be an `extern "C"` function pointer type matching the symbol's C signature.
unsafe fn fn_ptr<F: Copy>(p: *mut c_void) -> F {
    // Function and data pointers have the same size on Linux.
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: same size, and the caller vouches for the type.
    unsafe { std::mem::transmute_copy(&p) }
}

fn load() -> Result<Lib, String> {
    let rados = open(LIBRADOS)?;
    let rbd = open(LIBRBD)?;
    macro_rules! sym {
        ($h:expr, $name:ident) => {{
            let n = concat!(stringify!($name), "\0");
            // SAFETY: dlsym with a NUL-terminated name; a NULL result is an error below.
            let p = unsafe { libc::dlsym($h, n.as_ptr().cast()) };
            if p.is_null() {
                return Err(format!(
                    "Ceph's client library lacks {} (Ceph 15.2 or newer is needed): {}",
                    stringify!($name),
                    dl_error()
                ));
            }
            // SAFETY: the symbol has the C signature declared for the field (see the module
            // documentation).
            unsafe { fn_ptr(p) }
        }};
    }
    Ok(Lib {
        rados_create: sym!(rados, rados_create),
        rados_conf_read_file: sym!(rados, rados_conf_read_file),
        rados_conf_set: sym!(rados, rados_conf_set),
        rados_connect: sym!(rados, rados_connect),
        rados_shutdown: sym!(rados, rados_shutdown),
        rados_ioctx_create: sym!(rados, rados_ioctx_create),
        rados_ioctx_destroy: sym!(rados, rados_ioctx_destroy),
        rados_lock_exclusive: sym!(rados, rados_lock_exclusive),
        rados_unlock: sym!(rados, rados_unlock),
        rbd_open: sym!(rbd, rbd_open),
        rbd_close: sym!(rbd, rbd_close),
        rbd_get_size: sym!(rbd, rbd_get_size),
        rbd_aio_create_completion: sym!(rbd, rbd_aio_create_completion),
        rbd_aio_get_return_value: sym!(rbd, rbd_aio_get_return_value),
        rbd_aio_release: sym!(rbd, rbd_aio_release),
        rbd_aio_read: sym!(rbd, rbd_aio_read),
        rbd_aio_write: sym!(rbd, rbd_aio_write),
        rbd_aio_flush: sym!(rbd, rbd_aio_flush),
        rbd_aio_discard: sym!(rbd, rbd_aio_discard),
        rbd_aio_write_zeroes: sym!(rbd, rbd_aio_write_zeroes),
        rbd_aio_compare_and_write: sym!(rbd, rbd_aio_compare_and_write),
        rbd_diff_iterate2: sym!(rbd, rbd_diff_iterate2),
    })
}

/// A negative errno from librados/librbd as an `io::Error` saying what failed.
pub fn err(what: &str, r: i64) -> io::Error {
    let errno = i32::try_from(-r).unwrap_or(libc::EIO);
    let os = io::Error::from_raw_os_error(errno);
    io::Error::new(os.kind(), format!("{what}: {os}"))
}
