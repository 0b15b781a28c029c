//! The few Linux calls std does not wrap (hole punching, `SEEK_DATA`/`SEEK_HOLE`, block-device
//! ioctls), plus the positional-I/O helpers the file and block backstores share.
//!
//! Every `unsafe` block is one syscall on a descriptor borrowed from a live `File`, with
//! plain-old-data arguments, so none of them can violate memory safety.

#[cfg(not(target_os = "linux"))]
compile_error!("the backstore crate needs Linux (fallocate, SEEK_DATA, BLK* ioctls)");

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use crate::check_range;

/// Reads `buf` at `offset` of a store of `size` bytes.
pub(crate) fn read_at(file: &File, size: u64, buf: &mut [u8], offset: u64) -> io::Result<()> {
    check_range(size, offset, buf.len() as u64)?;
    file.read_exact_at(buf, offset)
}

/// Reads `len` bytes at `offset` of a store of `size` bytes into a new buffer, straight into
/// its spare capacity (no zero-fill pass before the read).
pub(crate) fn read_vec(file: &File, size: u64, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    check_range(size, offset, len as u64)?;
    let mut v: Vec<u8> = Vec::with_capacity(len);
    while v.len() < len {
        let done = v.len();
        let spare = &mut v.spare_capacity_mut()[..len - done];
        let at = offset + done as u64;
        // SAFETY: pread writes at most `spare.len()` bytes into memory we own and reserved;
        // only the bytes it reports written are then counted as initialized (set_len).
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                at as libc::off_t,
            )
        };
        match n {
            n if n > 0 => unsafe { v.set_len(done + n as usize) },
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(v)
}

/// Writes `buf` at `offset` of a store of `size` bytes.
pub(crate) fn write_at(file: &File, size: u64, buf: &[u8], offset: u64) -> io::Result<()> {
    check_range(size, offset, buf.len() as u64)?;
    file.write_all_at(buf, offset)
}

/// Writes `len` zero bytes at `offset`, for stores that cannot deallocate.
pub(crate) fn write_zeroes(file: &File, offset: u64, len: u64) -> io::Result<()> {
    static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZEROES.len() as u64);
        // `n` is at most 64 KiB, so the cast cannot truncate.
        file.write_all_at(&ZEROES[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// Whether an error means "this file system or device cannot do that" rather than a failure.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENODEV | libc::ENOTTY)
    )
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{v} does not fit in off_t"),
        )
    })
}

/// Runs a syscall that returns -1 on error, retrying on EINTR.
fn syscall<T: PartialEq + From<i8>>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let r = f();
        if r != T::from(-1) {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: deallocates the range; it reads back as zeroes.
/// On a block device the kernel only succeeds when it can guarantee the zeroes without writing
/// them (WRITE ZEROES with unmap), and the range must be aligned to the logical block size.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on an open descriptor; no pointers are passed.
    syscall(|| unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// `fallocate(ZERO_RANGE)`: the range reads back as zeroes and keeps (or gets) its blocks.
/// `Ok(false)` when the file system cannot (nothing changed; the caller writes the zeroes).
pub(crate) fn try_zero_range(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    // SAFETY: plain syscall on an open descriptor; no pointers are passed.
    match syscall(|| unsafe {
        libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, offset, len)
    }) {
        Ok(_) => Ok(true),
        Err(e) if is_unsupported(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Bytes an unprivileged writer can still allocate on the file system holding `file`.
pub(crate) fn free_bytes(file: &File) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs fills the struct it is given a pointer to; it is read only on success.
    syscall(|| unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so every field is initialized.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Punches a hole when `can_punch`; `Ok(false)` when the file system or device cannot, in which
/// case nothing was changed and the caller must write the zeroes itself.
pub(crate) fn try_punch_hole(
    file: &File,
    can_punch: bool,
    offset: u64,
    len: u64,
) -> io::Result<bool> {
    if !can_punch {
        return Ok(false);
    }
    match punch_hole(file, offset, len) {
        Ok(()) => Ok(true),
        Err(e) if is_unsupported(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `file` can punch holes, found without changing it: a hole past the end of the file
/// with `KEEP_SIZE` touches no data and no length. Any answer other than "unsupported" counts
/// as yes, and `unmap` still falls back to writing zeroes if the guess was wrong.
pub(crate) fn probe_punch_hole(file: &File, len: u64) -> bool {
    match punch_hole(file, len, 4096) {
        Ok(()) => true,
        Err(e) => !is_unsupported(&e),
    }
}

/// The next byte at or after `offset` that holds data, or `None` if there is none before EOF.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_DATA)
}

/// The next hole at or after `offset`; end of file counts as a hole.
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_HOLE)
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = to_off(offset)?;
    // SAFETY: plain syscall on an open descriptor. It moves the shared file position, which no
    // backstore uses: all data I/O is positional.
    match syscall(|| unsafe { libc::lseek(file.as_raw_fd(), off, whence) }) {
        // A successful lseek never returns a negative offset.
        Ok(pos) => Ok(Some(u64::try_from(pos).unwrap_or(offset))),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

// Block-device ioctl numbers from <linux/fs.h>, built the way <asm-generic/ioctl.h> builds them;
// a few architectures use a 13-bit size field and different direction bits.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod ioc {
    pub const NONE: u32 = 1;
    pub const READ: u32 = 2;
    pub const SIZE_BITS: u32 = 13;
}
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod ioc {
    pub const NONE: u32 = 0;
    pub const READ: u32 = 2;
    pub const SIZE_BITS: u32 = 14;
}

const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << (16 + ioc::SIZE_BITS)) | ((size as u32) << 16) | (0x12 << 8) | nr
}

/// `_IO(0x12, 104)`: logical block size in bytes (an int).
const BLKSSZGET: u32 = ioc(ioc::NONE, 104, 0);
/// `_IOR(0x12, 114, size_t)`: device size in bytes (a u64).
const BLKGETSIZE64: u32 = ioc(ioc::READ, 114, std::mem::size_of::<usize>());
/// `_IO(0x12, 127)`: write zeroes to `[start, len]` (u64 pair), offloaded when the device can.
const BLKZEROOUT: u32 = ioc(ioc::NONE, 127, 0);

/// Size in bytes of the block device open as `file`.
pub(crate) fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live u64.
    syscall(|| unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKGETSIZE64 as libc::Ioctl,
            &mut size as *mut u64,
        )
    })?;
    Ok(size)
}

/// Logical block size of the block device open as `file`.
pub(crate) fn block_logical_size(file: &File) -> io::Result<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at a live c_int.
    syscall(|| unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKSSZGET as libc::Ioctl,
            &mut lbs as *mut libc::c_int,
        )
    })?;
    u32::try_from(lbs).map_err(|_| io::Error::other(format!("bad logical block size {lbs}")))
}

/// `BLKZEROOUT`: zeroes a 512-byte aligned range of a block device, letting the device do it
/// (WRITE SAME / WRITE ZEROES) when it can.
pub(crate) fn block_zero_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 through the pointer, which points at a live [u64; 2].
    syscall(|| unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as libc::Ioctl, range.as_ptr()) })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn ioctl_numbers_match_linux_headers() {
        assert_eq!(BLKSSZGET, 0x1268);
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
        assert_eq!(BLKZEROOUT, 0x127f);
    }
}
