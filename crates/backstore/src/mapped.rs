//! Read-only windows onto a file's page cache, for [`crate::Backstore::read_pieces`]: a reader
//! that transforms the data on its way out (decryption) then reads the cached pages themselves,
//! one pass, instead of a copy of them made by `pread` and a second pass over the copy.
//!
//! Bounded, whatever the initiators do:
//! - At most [`WINDOWS`] windows of [`WINDOW`] bytes are mapped per file at a time, so the page
//!   tables behind them stay under `WINDOWS * WINDOW / 512` bytes (4 MiB) per file however large
//!   the file is. The least recently used window is unmapped when a new one is needed, once the
//!   last reader of it is done.
//! - A miss maps a new window only if [`MAP_EVERY`] reads went by since the last mapping, so
//!   random reads over a file far larger than the windows fall back to `pread` instead of paying
//!   an `mmap` and an `munmap` per command. Sequential reads map a window every 2,048 reads of
//!   128 KiB.
//! - The process holds at most [`GUARDS`] windows across all files; past that, reads use `pread`.
//!
//! Faults: a page of a mapping whose file offset lies past the end of the file (someone truncated
//! the file behind the backstore's back) or whose read from disk fails raises SIGBUS when it is
//! touched, which would end the daemon. A process-wide handler, installed with the first window,
//! recognises faults inside a window, maps a page of zeroes over the faulting page so that the
//! access completes, and marks the window spoiled. The reader then reports that its pieces are
//! not to be trusted, the window is dropped, and the caller reads with `pread` instead, which
//! reports the short file or the I/O error as it would have without windows. SIGBUS anywhere
//! else goes on to the handler that was there before (Rust's stack-overflow report) or to the
//! default action. One difference remains: a file cut to a length that is not a multiple of the
//! page size has the rest of its last page read as zeroes through a mapping (the kernel fills it
//! so) where `pread` would report the short file; those bytes were gone either way.
//!
//! A page that is not in the page cache is read from disk by the fault, in the thread that
//! touches it, as `pread` would read it: the transport only runs reads inline where it already
//! expects page-cache speed (`DeviceServer::is_quick`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock, PoisonError};

/// Bytes per window; a multiple of every page size Linux has.
pub(crate) const WINDOW: u64 = 256 << 20;
const _: () = assert!(WINDOW.is_multiple_of(1 << 16));
/// Windows mapped at a time per file.
pub(crate) const WINDOWS: usize = 8;
/// Reads between two new mappings, at least.
pub(crate) const MAP_EVERY: u64 = 32;
/// Windows mapped at a time in the whole process.
const GUARDS: usize = 256;

/// The windows of one file.
pub(crate) struct Windows {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The file's size as the store has it.
    size: u64,
    /// Mapped windows: (index of the window in the file, the mapping, read count at last use).
    maps: Vec<(u64, Arc<Window>, u64)>,
    /// Reads asked for so far, and the count at the last new mapping.
    reads: u64,
    mapped_at: Option<u64>,
}

impl std::fmt::Debug for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        write!(
            f,
            "Windows {{ size: {}, mapped: {} }}",
            st.size,
            st.maps.len()
        )
    }
}

impl Windows {
    /// Windows onto a file of `size` bytes (mapped lazily, on the first reads).
    pub(crate) fn new(size: u64) -> Self {
        Windows {
            state: Mutex::new(State {
                size,
                ..State::default()
            }),
        }
    }

    /// The file is `size` bytes long now: every window goes (each is unmapped once its last
    /// reader is done), and new ones are mapped to the new length.
    pub(crate) fn resize(&self, size: u64) {
        let gone = {
            let mut st = self.lock();
            st.size = size;
            std::mem::take(&mut st.maps)
        };
        drop(gone);
    }

    /// Windows mapped now.
    #[cfg(test)]
    pub(crate) fn mapped(&self) -> usize {
        self.lock().maps.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`crate::Backstore::read_pieces`] over `file` (the range already checked against the
    /// store): `f` gets the cached bytes, in pieces that end at window boundaries (multiples of
    /// 4096) or where the range does. `Ok(false)` when the windows cannot serve the range now (no
    /// window and none may be mapped yet, the process's guards all taken, `mmap` failed), or
    /// when a page of the range raised SIGBUS while `f` read it: the caller then reads with
    /// `pread` and ignores what `f` saw.
    pub(crate) fn read(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> io::Result<bool> {
        if len == 0 {
            return Ok(true);
        }
        let end = offset + len as u64;
        let (first, last) = (offset / WINDOW, (end - 1) / WINDOW);
        let mut held = Vec::with_capacity((last - first + 1) as usize);
        // A window pushed out is unmapped after the lock is let go (or by its last reader).
        let mut evicted = Vec::new();
        {
            let mut st = self.lock();
            st.reads += 1;
            for index in first..=last {
                match self.window(&mut st, file, index, &mut evicted) {
                    Some(w) => held.push(w),
                    None => return Ok(false),
                }
            }
        }
        drop(evicted);
        // A window mapped before the file grew is shorter than the range needs: pread.
        let short = held
            .iter()
            .zip(first..)
            .any(|(w, index)| index * WINDOW + (w.len as u64) < end.min((index + 1) * WINDOW));
        if short {
            return Ok(false);
        }
        for (w, index) in held.iter().zip(first..) {
            let base = index * WINDOW;
            let from = offset.max(base) - base;
            let to = end.min(base + w.len as u64) - base;
            // SAFETY: `from..to` lies inside the window (its length is the file's size past
            // `base`, and the range was checked against the size), which stays mapped while
            // `held` holds it. The pages may change under the slice while `f` reads them, when
            // another command writes the same blocks at the same time, as with any shared
            // mapping; `f` loads each byte once, and SAM-5 gives two overlapping commands in
            // flight at once no order anyway. A page that cannot be read faults into
            // `on_sigbus`, which puts zeroes there and marks the window; checked below.
            let piece = unsafe {
                std::slice::from_raw_parts(w.ptr.add(from as usize), (to - from) as usize)
            };
            f(piece.len(), Some(piece));
        }
        held.retain(|w| GUARD[w.guard].spoiled.load(Ordering::SeqCst));
        if held.is_empty() {
            return Ok(true);
        }
        let spoiled = held.len();
        let gone: Vec<_> = {
            let mut st = self.lock();
            let (gone, kept) = std::mem::take(&mut st.maps)
                .into_iter()
                .partition(|m| held.iter().any(|w| Arc::ptr_eq(w, &m.1)));
            st.maps = kept;
            gone
        };
        drop(gone);
        tracing::warn!(
            windows = spoiled,
            "file backstore: a mapped page could not be read (file truncated or I/O error); \
             reading with pread instead"
        );
        Ok(false)
    }

    /// The mapped window `index`, mapping it if allowed (see the module documentation).
    fn window(
        &self,
        st: &mut State,
        file: &File,
        index: u64,
        evicted: &mut Vec<Arc<Window>>,
    ) -> Option<Arc<Window>> {
        let now = st.reads;
        if let Some(m) = st.maps.iter_mut().find(|m| m.0 == index) {
            m.2 = now;
            return Some(m.1.clone());
        }
        if st.mapped_at.is_some_and(|at| now - at < MAP_EVERY) {
            return None;
        }
        let base = index * WINDOW;
        let len = usize::try_from(WINDOW.min(st.size.checked_sub(base)?)).ok()?;
        let w = Arc::new(Window::map(file, base, len)?);
        st.mapped_at = Some(now);
        if st.maps.len() >= WINDOWS {
            let lru = (0..st.maps.len()).min_by_key(|&i| st.maps[i].2)?;
            evicted.push(st.maps.swap_remove(lru).1);
        }
        st.maps.push((index, w.clone(), now));
        Some(w)
    }
}

/// One read-only shared mapping of `len` bytes of a file, registered with the SIGBUS handler.
struct Window {
    ptr: *const u8,
    len: usize,
    guard: usize,
}

// SAFETY: the mapping is read-only memory owned by the `Window` until its drop unmaps it; any
// thread may read it.
unsafe impl Send for Window {}
unsafe impl Sync for Window {}

impl Window {
    fn map(file: &File, offset: u64, len: usize) -> Option<Window> {
        install_handler();
        let guard = claim_guard()?;
        // SAFETY: a new mapping chosen by the kernel (no address given), of a descriptor borrowed
        // from a live `File`; nothing else refers to it yet.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            tracing::debug!(err = %io::Error::last_os_error(), "file backstore: mmap failed");
            release_guard(guard);
            return None;
        }
        let g = &GUARD[guard];
        g.spoiled.store(false, Ordering::Relaxed);
        g.start.store(ptr as usize, Ordering::Relaxed);
        g.end.store(ptr as usize + len, Ordering::Release);
        Some(Window {
            ptr: ptr.cast_const().cast(),
            len,
            guard,
        })
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // No reader is left (they hold the Arc), so no fault can be in flight in this range.
        let g = &GUARD[self.guard];
        g.end.store(0, Ordering::Release);
        g.start.store(0, Ordering::Release);
        // SAFETY: unmaps exactly the mapping `map` made (the pages `on_sigbus` replaced are
        // inside it), which nothing refers to any more.
        unsafe { libc::munmap(self.ptr.cast_mut().cast(), self.len) };
        release_guard(self.guard);
    }
}

/// A window as the SIGBUS handler sees it. `end == 0` means no window (any more).
struct Guard {
    taken: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
    spoiled: AtomicBool,
}

static GUARD: [Guard; GUARDS] = [const {
    Guard {
        taken: AtomicBool::new(false),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        spoiled: AtomicBool::new(false),
    }
}; GUARDS];

fn claim_guard() -> Option<usize> {
    GUARD.iter().position(|g| {
        g.taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    })
}

fn release_guard(i: usize) {
    GUARD[i].taken.store(false, Ordering::Release);
}

/// The SIGBUS disposition before ours, and the page size, both set before the handler is.
struct Before(libc::sigaction);
static BEFORE: OnceLock<Before> = OnceLock::new();
static PAGE: AtomicUsize = AtomicUsize::new(4096);

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sysconf and sigaction with valid pointers to owned, initialised structs.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old);
            let _ = BEFORE.set(Before(old));
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut());
        }
    });
}

/// SIGBUS: inside a window, zeroes over the page and the window marked spoiled; anywhere else,
/// whatever was there before. Only atomics, `mmap` and `sigaction` (system calls) run here.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; si_addr is meaningful for the fault codes
    // (si_code > 0), which are the only ones looked at.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code > 0 {
        for g in &GUARD {
            let end = g.end.load(Ordering::Acquire);
            let start = g.start.load(Ordering::Acquire);
            if end == 0 || addr < start || addr >= end {
                continue;
            }
            let page = addr & !(PAGE.load(Ordering::Relaxed) - 1);
            // Marked before the zeroes are there: a reader on another thread that reads them
            // (without a fault of its own) checks the mark after its reads and must see it.
            g.spoiled.store(true, Ordering::SeqCst);
            // SAFETY: replaces one page inside our own mapping (start..end) with anonymous
            // zeroes; errno is kept for the interrupted code.
            let ok = unsafe {
                let errno = *libc::__errno_location();
                let p = libc::mmap(
                    page as *mut libc::c_void,
                    PAGE.load(Ordering::Relaxed),
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
                *libc::__errno_location() = errno;
                p != libc::MAP_FAILED
            };
            if ok {
                return;
            }
            break;
        }
    }
    // SAFETY: calls the previous handler as the kernel would have, with the same arguments, or
    // restores the default action so that the faulting access, run again on return, ends the
    // process as it would have without us.
    unsafe {
        let before = BEFORE.get().map(|b| b.0.sa_sigaction);
        match before {
            Some(h) if h != libc::SIG_DFL && h != libc::SIG_IGN => {
                let flags = BEFORE.get().map_or(0, |b| b.0.sa_flags);
                if flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(h);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
                    f(sig);
                }
            }
            _ => {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
                if code <= 0 {
                    // Sent, not a fault: nothing runs again, so send it again.
                    libc::raise(sig);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    fn collect(w: &Windows, file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let ok = w
            .read(file, offset, len, &mut |n, p| {
                let p = p.expect("a file lends bytes");
                assert_eq!(p.len(), n);
                out.extend_from_slice(p);
            })
            .unwrap();
        ok.then_some(out)
    }

    fn temp_file(len: usize) -> (Scratch, File, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let p = Scratch::new("windows");
        let mut f = File::create(&p.0).unwrap();
        f.write_all(&data).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p.0)
            .unwrap();
        (p, f, data)
    }

    /// A scratch file, removed at drop.
    pub(crate) struct Scratch(pub(crate) std::path::PathBuf);
    impl Scratch {
        pub(crate) fn new(tag: &str) -> Scratch {
            use std::sync::atomic::AtomicU32;
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("ferrite-mapped-{tag}-{}-{n}", std::process::id());
            Scratch(std::env::temp_dir().join(name))
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A sparse scratch file of `size` bytes, open for reading and writing.
    fn sparse(tag: &str, size: u64) -> (Scratch, File) {
        let p = Scratch::new(tag);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p.0)
            .unwrap();
        f.set_len(size).unwrap();
        (p, f)
    }

    #[test]
    fn lends_the_file_bytes() {
        let (_p, f, data) = temp_file(3 << 20);
        let w = Windows::new(data.len() as u64);
        for (off, len) in [
            (0, 4096),
            (4096 * 5, 128 << 10),
            (0, 3 << 20),
            (1 << 20, 8192),
        ] {
            let got = collect(&w, &f, off as u64, len).expect("mapped");
            assert_eq!(got, data[off..off + len]);
        }
        // Writes through the descriptor show through the mapping (one page cache).
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0xee; 4096], 8192).unwrap();
        assert_eq!(collect(&w, &f, 8192, 4096).unwrap(), vec![0xee; 4096]);
        assert_eq!(collect(&w, &f, 0, 0), Some(vec![]));
    }

    #[test]
    fn windows_are_bounded_and_misses_rate_limited() {
        // A sparse file of 40 windows; reads touch one page of each.
        let size = 40 * WINDOW;
        let (_p, f) = sparse("many", size);
        let w = Windows::new(size);
        assert!(collect(&w, &f, 0, 4096).is_some(), "the first read maps");
        // A miss right after a mapping is refused (the caller uses pread)...
        assert!(collect(&w, &f, WINDOW, 4096).is_none());
        // ...but hits are served, and after MAP_EVERY reads a miss maps again.
        for _ in 0..MAP_EVERY {
            assert_eq!(collect(&w, &f, 4096, 4096), Some(vec![0; 4096]));
        }
        assert!(collect(&w, &f, WINDOW, 4096).is_some());
        // However many windows are visited, at most WINDOWS stay mapped.
        for i in 0..40 {
            for _ in 0..MAP_EVERY {
                let _ = collect(&w, &f, i * WINDOW, 4096);
            }
            assert!(w.mapped() <= WINDOWS);
        }
        assert_eq!(w.mapped(), WINDOWS);
        // A range across a window boundary comes in two pieces, both mapped.
        let mut pieces = Vec::new();
        for _ in 0..2 * MAP_EVERY {
            pieces.clear();
            let _ = w.read(&f, 2 * WINDOW - 4096, 8192, &mut |n, _| pieces.push(n));
        }
        assert_eq!(pieces, vec![4096, 4096]);
    }

    #[test]
    fn concurrent_readers_see_the_right_window_while_others_are_pushed_out() {
        use std::os::unix::fs::FileExt;
        // Twice as many windows as may be mapped, each starting with a block naming it.
        const N: u64 = 2 * WINDOWS as u64;
        let (_p, f) = sparse("concurrent", N * WINDOW);
        for i in 0..N {
            f.write_all_at(&[i as u8 + 1; 4096], i * WINDOW).unwrap();
        }
        let w = Windows::new(N * WINDOW);
        let served = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (w, f, served) = (&w, &f, &served);
                s.spawn(move || {
                    let mut seed = t * 7919 + 1;
                    for _ in 0..3000 {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let i = seed % N;
                        if let Some(got) = collect(w, f, i * WINDOW, 4096) {
                            assert!(got.iter().all(|&b| b == i as u8 + 1), "window {i}");
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        assert!(w.mapped() <= WINDOWS);
                    }
                });
            }
        });
        assert!(
            served.load(Ordering::Relaxed) > 1000,
            "the windows served reads"
        );
    }

    #[test]
    fn a_truncated_file_is_not_a_crash() {
        let (_p, f, data) = temp_file(1 << 20);
        let w = Windows::new(data.len() as u64);
        assert_eq!(collect(&w, &f, 0, 8192).unwrap(), data[..8192]);
        // Someone else cuts the file in half: the pages past the end raise SIGBUS.
        f.set_len(512 << 10).unwrap();
        assert_eq!(
            collect(&w, &f, 0, 8192).unwrap(),
            data[..8192],
            "still there"
        );
        let mut seen = 0;
        let ok = w
            .read(&f, 768 << 10, 8192, &mut |n, p| {
                seen += n;
                assert!(
                    p.unwrap().iter().all(|&b| b == 0),
                    "zeroes over the lost pages"
                );
            })
            .unwrap();
        assert_eq!(
            (ok, seen),
            (false, 8192),
            "the reader is told not to trust it"
        );
        assert!(w.mapped() == 0, "the spoiled window is dropped");
        // SIGBUS outside any window still reaches the previous handler: not testable without
        // ending the test process; `on_sigbus` forwards it (module documentation).
    }
}
