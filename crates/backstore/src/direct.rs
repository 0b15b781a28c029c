//! Positional I/O with `O_DIRECT`: past the page cache, straight to the device.
//!
//! Why: when several cluster nodes open one shared device, each kernel's page cache is its own.
//! A node reading through its cache could be served blocks another node has since rewritten,
//! and a node that stops (fences itself, or aborts) could leave dirty pages its kernel writes
//! back later, after a partner took over. Direct I/O leaves neither: a read comes from the
//! device, a completed write is on it (in its volatile cache at worst, which a flush empties).
//!
//! `O_DIRECT` wants the memory address, the file offset and the length aligned to the device's
//! logical block size. Buffers from the device server are ordinary heap memory, so data passes
//! through an aligned bounce buffer of at most [`CHUNK`] bytes (one copy, which costs far less
//! than the device). Ranges are aligned in practice (a logical unit's blocks are at least the
//! device's); an unaligned one is widened to whole device blocks — read, and for a write
//! read-modify-write of its edge blocks.

use std::alloc::{self, Layout};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use crate::check_range;

/// Largest bounce buffer: big transfers go in pieces of this size.
pub(crate) const CHUNK: usize = 1 << 20;

/// Heap memory aligned to `align`, zero-filled.
pub(crate) struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer is plain memory owned by this value alone.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub(crate) fn new(len: usize, align: usize) -> io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(align), align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY: the layout has a non-zero size (at least `align`, a power of two).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "bounce buffer for direct I/O",
            ));
        }
        Ok(AlignedBuf { ptr, layout })
    }

    pub(crate) fn slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.layout.size());
        // SAFETY: `ptr` points to `layout.size()` initialized (zeroed) bytes we own, and the
        // borrow of `self` keeps them alive and unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// `[offset, offset + len)` widened to whole blocks of `align`.
fn widen(offset: u64, len: usize, align: u64) -> (u64, usize) {
    let start = offset / align * align;
    let end = (offset + len as u64).div_ceil(align) * align;
    (start, (end - start) as usize)
}

/// One piece of a transfer through the bounce buffer: bytes `done..done + want` of the
/// caller's buffer, at device offset `at`, inside the whole device blocks `start..start + wide`.
struct Piece {
    done: usize,
    at: u64,
    want: usize,
    start: u64,
    wide: usize,
}

/// Cut a transfer of `len` bytes at `offset` into pieces that fit a bounce buffer, and the
/// bounce buffer for them.
fn pieces(len: usize, offset: u64, align: u32) -> io::Result<(AlignedBuf, Vec<Piece>)> {
    let align = u64::from(align);
    let bounce = AlignedBuf::new(CHUNK.min(len + 2 * align as usize), align as usize)?;
    let mut v = Vec::with_capacity(len / (CHUNK / 2) + 1);
    let mut done = 0;
    while done < len {
        // Each piece starts on a block boundary of the device (after the first).
        let at = offset + done as u64;
        let want = (len - done).min(CHUNK - 2 * align as usize);
        let (start, wide) = widen(at, want, align);
        v.push(Piece {
            done,
            at,
            want,
            start,
            wide,
        });
        done += want;
    }
    Ok((bounce, v))
}

/// Read `buf.len()` bytes at `offset` of a store of `size` bytes opened with `O_DIRECT`.
pub(crate) fn read_at(
    file: &File,
    size: u64,
    align: u32,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<()> {
    check_range(size, offset, buf.len() as u64)?;
    let (mut bounce, pieces) = pieces(buf.len(), offset, align)?;
    for p in pieces {
        let b = bounce.slice(p.wide);
        file.read_exact_at(b, p.start)?;
        let skip = (p.at - p.start) as usize;
        buf[p.done..p.done + p.want].copy_from_slice(&b[skip..skip + p.want]);
    }
    Ok(())
}

/// Write all of `buf` at `offset` of a store of `size` bytes opened with `O_DIRECT`. Writes
/// that do not cover whole device blocks read-modify-write their edge blocks under `rmw`, so
/// two of them on disjoint bytes of one block cannot undo each other.
pub(crate) fn write_at(
    file: &File,
    size: u64,
    align: u32,
    rmw: &Mutex<()>,
    buf: &[u8],
    offset: u64,
) -> io::Result<()> {
    check_range(size, offset, buf.len() as u64)?;
    let (mut bounce, pieces) = pieces(buf.len(), offset, align)?;
    for p in pieces {
        let b = bounce.slice(p.wide);
        let skip = (p.at - p.start) as usize;
        let data = &buf[p.done..p.done + p.want];
        if p.start != p.at || p.wide != p.want {
            // Edge blocks shared with data we must keep: read them first.
            let _one_at_a_time = rmw.lock().unwrap_or_else(|e| e.into_inner());
            file.read_exact_at(b, p.start)?;
            b[skip..skip + p.want].copy_from_slice(data);
            file.write_all_at(b, p.start)?;
        } else {
            b.copy_from_slice(data);
            file.write_all_at(b, p.start)?;
        }
    }
    Ok(())
}

/// Write zeroes over `[offset, offset + len)` (the range is inside the store).
pub(crate) fn write_zeroes(
    file: &File,
    align: u32,
    rmw: &Mutex<()>,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let zeroes = vec![0u8; (len as usize).min(CHUNK)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64) as usize;
        write_at(file, u64::MAX, align, rmw, &zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_covers_whole_blocks() {
        assert_eq!(widen(0, 512, 512), (0, 512));
        assert_eq!(widen(100, 10, 512), (0, 512));
        assert_eq!(widen(500, 20, 512), (0, 1024));
        assert_eq!(widen(4096, 4096, 512), (4096, 4096));
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for align in [512usize, 4096] {
            let mut b = AlignedBuf::new(8192, align).unwrap();
            let s = b.slice(8192);
            assert_eq!(s.as_ptr() as usize % align, 0);
            assert!(s.iter().all(|&x| x == 0));
        }
    }
}
