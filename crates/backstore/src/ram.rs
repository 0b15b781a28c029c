//! Sparse RAM disk.
//!
//! The store is a table of fixed-size chunks, each behind its own `RwLock` and allocated on the
//! first write that is not all zeroes. Why: a test LUN of 1 GiB must be cheap to create and must
//! not commit memory it never stores; and concurrent commands on different chunks must not
//! contend on one lock. An unallocated chunk reads as zeroes, and unmapping a whole chunk frees
//! it, so the RAM disk is thin-provisioned like a sparse file.

use std::fmt;
use std::io;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{check_range, Backstore, Extent};

type Chunk = RwLock<Option<Box<[u8]>>>;

const _: () = assert!(RamBackstore::CHUNK_SIZE.is_multiple_of(4096));

/// A RAM disk that commits memory only for chunks that hold data.
pub struct RamBackstore {
    size: u64,
    chunks: Box<[Chunk]>,
}

impl RamBackstore {
    /// Allocation granule: memory is committed and freed in chunks of this many bytes.
    pub const CHUNK_SIZE: usize = 1 << 20;
    const CHUNK: u64 = Self::CHUNK_SIZE as u64;

    /// A zero-filled RAM disk of `size` bytes. Only the chunk table is allocated up front
    /// (a few dozen bytes per MiB); data memory is committed as chunks are written.
    ///
    /// # Panics
    /// If the chunk table itself cannot be allocated (a size of many terabytes). Use
    /// [`RamBackstore::try_new`] for sizes that come from configuration or an operator.
    pub fn new(size: u64) -> Self {
        match Self::try_new(size) {
            Ok(ram) => ram,
            Err(e) => panic!("RamBackstore::new({size}): {e}"),
        }
    }

    /// Like [`RamBackstore::new`], but reports a size whose chunk table cannot be allocated as an
    /// error instead of panicking or aborting.
    pub fn try_new(size: u64) -> io::Result<Self> {
        let count = usize::try_from(size.div_ceil(Self::CHUNK)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("RAM disk size {size} is too large"),
            )
        })?;
        let mut chunks = Vec::new();
        chunks.try_reserve_exact(count).map_err(|e| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("RAM disk size {size}: cannot allocate the chunk table: {e}"),
            )
        })?;
        chunks.resize_with(count, || RwLock::new(None));
        Ok(RamBackstore {
            size,
            chunks: chunks.into_boxed_slice(),
        })
    }

    /// Bytes of data memory currently committed (allocated chunks × their length).
    pub fn allocated_bytes(&self) -> u64 {
        (0..self.chunks.len())
            .filter(|&i| self.read_chunk(i).is_some())
            .map(|i| self.chunk_len(i) as u64)
            .sum()
    }

    /// Whether the byte at `offset` lies in an allocated chunk.
    pub fn is_mapped(&self, offset: u64) -> io::Result<bool> {
        Ok(self.extent_at(offset)?.mapped)
    }

    /// The run of chunks with the same allocation status as the one holding `offset`, from
    /// `offset` to the end of that run.
    pub fn extent_at(&self, offset: u64) -> io::Result<Extent> {
        check_range(self.size, offset, 1)?;
        let first = Self::index(offset);
        let mapped = self.read_chunk(first).is_some();
        let mut end = first + 1;
        while end < self.chunks.len() && self.read_chunk(end).is_some() == mapped {
            end += 1;
        }
        let end = (end as u64).saturating_mul(Self::CHUNK).min(self.size);
        Ok(Extent {
            offset,
            len: end - offset,
            mapped,
        })
    }

    /// Chunk index holding byte `offset`; only called with offsets below `size`, so the index is
    /// below `chunks.len()` and the cast cannot truncate.
    fn index(offset: u64) -> usize {
        (offset / Self::CHUNK) as usize
    }

    /// Length of chunk `i`: `CHUNK_SIZE`, except a shorter last chunk.
    fn chunk_len(&self, i: usize) -> usize {
        let start = i as u64 * Self::CHUNK;
        (self.size - start).min(Self::CHUNK) as usize
    }

    // A panic while a chunk lock is held cannot leave the bytes half-updated in a way that
    // matters more than a torn write, so poisoning is ignored rather than propagated as a panic.
    fn read_chunk(&self, i: usize) -> RwLockReadGuard<'_, Option<Box<[u8]>>> {
        self.chunks[i]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_chunk(&self, i: usize) -> RwLockWriteGuard<'_, Option<Box<[u8]>>> {
        self.chunks[i]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Splits the (already range-checked) span `offset..offset + len` at chunk boundaries and
    /// calls `f(chunk index, offset within chunk, length, offset within span)` for each piece.
    fn for_each_piece(
        offset: u64,
        len: u64,
        mut f: impl FnMut(usize, usize, usize, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let within = (pos % Self::CHUNK) as usize;
            let n = (Self::CHUNK - within as u64).min(len - done);
            f(Self::index(pos), within, n as usize, done)?;
            done += n;
        }
        Ok(())
    }

    fn alloc_chunk(&self, i: usize) -> io::Result<Box<[u8]>> {
        let len = self.chunk_len(i);
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|e| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("RAM disk: cannot allocate a chunk: {e}"),
            )
        })?;
        data.resize(len, 0);
        Ok(data.into_boxed_slice())
    }
}

impl fmt::Debug for RamBackstore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamBackstore")
            .field("size", &self.size)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Backstore for RamBackstore {
    fn kind(&self) -> &'static str {
        "ram"
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        Self::for_each_piece(offset, buf.len() as u64, |i, within, n, done| {
            let out = &mut buf[done as usize..][..n];
            match &*self.read_chunk(i) {
                Some(data) => out.copy_from_slice(&data[within..][..n]),
                None => out.fill(0),
            }
            Ok(())
        })
    }

    fn read_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        check_range(self.size, offset, len as u64)?;
        let mut v = Vec::with_capacity(len);
        Self::for_each_piece(offset, len as u64, |i, within, n, _done| {
            match &*self.read_chunk(i) {
                Some(data) => v.extend_from_slice(&data[within..][..n]),
                None => v.resize(v.len() + n, 0),
            }
            Ok(())
        })?;
        Ok(v)
    }

    // Pieces end at chunk boundaries, multiples of 4096 bytes (the trait's promise).
    fn read_pieces(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> io::Result<bool> {
        check_range(self.size, offset, len as u64)?;
        Self::for_each_piece(offset, len as u64, |i, within, n, _done| {
            // The chunk's read lock is held while `f` looks at its bytes.
            match &*self.read_chunk(i) {
                Some(data) => f(n, Some(&data[within..][..n])),
                None => f(n, None),
            }
            Ok(())
        })?;
        Ok(true)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        Self::for_each_piece(offset, buf.len() as u64, |i, within, n, done| {
            let src = &buf[done as usize..][..n];
            let mut chunk = self.write_chunk(i);
            if chunk.is_none() {
                // Zeroes written to an unallocated chunk change nothing: keep it sparse.
                if src.iter().all(|&b| b == 0) {
                    return Ok(());
                }
                *chunk = Some(self.alloc_chunk(i)?);
            }
            if let Some(data) = chunk.as_mut() {
                data[within..][..n].copy_from_slice(src);
            }
            Ok(())
        })
    }

    fn write_pieces(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, &mut [u8]),
    ) -> io::Result<bool> {
        check_range(self.size, offset, len as u64)?;
        Self::for_each_piece(offset, len as u64, |i, within, n, done| {
            let mut chunk = self.write_chunk(i);
            if chunk.is_none() {
                *chunk = Some(self.alloc_chunk(i)?);
            }
            if let Some(data) = chunk.as_mut() {
                f(done as usize, &mut data[within..][..n]);
            }
            Ok(())
        })?;
        Ok(true)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool> {
        check_range(self.size, offset, len)?;
        Self::for_each_piece(offset, len, |i, within, n, _| {
            let mut chunk = self.write_chunk(i);
            if within == 0 && n == self.chunk_len(i) {
                *chunk = None;
            } else if let Some(data) = chunk.as_mut() {
                data[within..][..n].fill(0);
            }
            Ok(())
        })?;
        Ok(true)
    }

    fn supports_unmap(&self) -> bool {
        true
    }

    fn space(&self) -> io::Result<Option<crate::Space>> {
        let used = self.allocated_bytes();
        Ok(Some(crate::Space {
            used,
            available: self.size - used,
            shared: false,
        }))
    }

    fn anchor(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        Self::for_each_piece(offset, len, |i, within, n, _| {
            let mut chunk = self.write_chunk(i);
            match chunk.as_mut() {
                Some(data) => data[within..][..n].fill(0),
                // A new chunk is all zeroes already.
                None => *chunk = Some(self.alloc_chunk(i)?),
            }
            Ok(())
        })
    }

    fn extent_at(&self, offset: u64) -> io::Result<Option<Extent>> {
        RamBackstore::extent_at(self, offset).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn one_gib_is_cheap_and_sparse() {
        let ram = RamBackstore::new(1 << 30);
        assert_eq!(ram.size(), 1 << 30);
        assert_eq!(ram.allocated_bytes(), 0);
        ram.write_at(&[1], 5 * MIB + 7).unwrap();
        assert_eq!(ram.allocated_bytes(), MIB);
    }

    #[test]
    fn zero_writes_do_not_allocate() {
        let ram = RamBackstore::new(4 * MIB);
        ram.write_at(&vec![0; 2 * MIB as usize], 100).unwrap();
        assert_eq!(ram.allocated_bytes(), 0);
    }

    #[test]
    fn whole_chunk_unmap_frees_and_partial_keeps() {
        let ram = RamBackstore::new(3 * MIB + 10);
        ram.write_at(&vec![7; (3 * MIB + 10) as usize], 0).unwrap();
        assert_eq!(ram.allocated_bytes(), 3 * MIB + 10);
        // Chunk 1 whole, plus a piece of chunk 0 and of chunk 2.
        assert!(ram.unmap(MIB - 1, MIB + 2).unwrap());
        assert_eq!(ram.allocated_bytes(), 2 * MIB + 10);
        // The short last chunk counts as whole.
        assert!(ram.unmap(3 * MIB, 10).unwrap());
        assert_eq!(ram.allocated_bytes(), 2 * MIB);
        assert!(!ram.is_mapped(MIB).unwrap());
        assert!(ram.is_mapped(MIB - 1).unwrap());
    }

    #[test]
    fn extents_follow_chunks() {
        let ram = RamBackstore::new(4 * MIB + 100);
        ram.write_at(&[1], 2 * MIB).unwrap();
        ram.write_at(&[1], 3 * MIB).unwrap();
        let e = ram.extent_at(10).unwrap();
        assert_eq!((e.offset, e.len, e.mapped), (10, 2 * MIB - 10, false));
        let e = ram.extent_at(2 * MIB + 1).unwrap();
        assert_eq!((e.len, e.mapped), (2 * MIB - 1, true));
        let e = ram.extent_at(4 * MIB).unwrap();
        assert_eq!((e.len, e.mapped), (100, false));
        assert!(ram.extent_at(4 * MIB + 100).is_err());
    }

    #[test]
    fn absurd_size_is_an_error_not_an_abort() {
        assert!(RamBackstore::try_new(u64::MAX).is_err());
    }

    #[test]
    fn empty_store() {
        let ram = RamBackstore::new(0);
        ram.read_at(&mut [], 0).unwrap();
        assert!(ram.read_at(&mut [0], 0).is_err());
        assert!(ram.extent_at(0).is_err());
        assert!(ram.unmap(0, 0).unwrap());
    }
}
