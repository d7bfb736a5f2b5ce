//! Memory maps that survive the file shrinking under them.
//!
//! Reading a mapped page that lies beyond the end of a file that was truncated after it was
//! mapped raises SIGBUS, which would kill the process. A backup cannot stop other programs
//! from truncating the files it reads, so every map made here is registered in a small
//! lock-free table, and a SIGBUS handler that finds the faulting address in a registered
//! map replaces the rest of that map with anonymous zero pages, marks the map as faulted
//! and returns: the read goes on (seeing zeros), and the caller, seeing the mark, treats the
//! file as changed while being read. A fault anywhere else is passed on to the handler that
//! was installed before (the Rust runtime's, or the default action), so real bugs still crash.
//!
//! This is the one module allowed `unsafe`. Why it is sound:
//! - the handler only reads atomics, calls `mmap` (a raw system call, safe in a signal
//!   handler on Linux) and `sigaction`, and never allocates or locks;
//! - `MAP_FIXED` replaces pages only inside a region this process mapped read-only from a
//!   file and still owns (the registration is removed before the map is dropped), so no
//!   other memory is touched;
//! - the slice handed out borrows the map, so it cannot outlive it.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use memmap2::{Mmap, MmapOptions, UncheckedAdvice};

/// How many maps may be open at once; more fall back to plain reads.
const SLOTS: usize = 128;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};
static REGISTRY: [Slot; SLOTS] = [EMPTY_SLOT; SLOTS];
static PAGE_BYTES: AtomicUsize = AtomicUsize::new(4096);
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE_BYTES.load(Ordering::Relaxed);
    for slot in &REGISTRY {
        let start = slot.start.load(Ordering::Acquire);
        let len = slot.len.load(Ordering::Acquire);
        if start != 0 && addr >= start && addr < start + len {
            let from = addr & !(page - 1);
            let end = (start + len).div_ceil(page) * page;
            // SAFETY: [from, end) lies inside a read-only file map this process owns.
            let p = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                slot.faulted.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: restore the previous disposition and return; the access faults again and
    // the previous handler (or the default action) deals with it.
    let prev = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `prev` is null or points to a leaked, initialised sigaction.
    unsafe {
        if prev.is_null() {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        } else {
            libc::sigaction(sig, prev, std::ptr::null_mut());
        }
    }
}

fn install() -> bool {
    INSTALL.call_once(|| {
        // SAFETY: sysconf and sigaction with a zeroed, fully set sigaction are sound.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE_BYTES.store(page as usize, Ordering::Relaxed);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            let prev: &'static mut libc::sigaction = Box::leak(Box::new(std::mem::zeroed()));
            if libc::sigaction(libc::SIGBUS, &action, prev) == 0 {
                PREVIOUS.store(prev, Ordering::Release);
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
    INSTALLED.load(Ordering::Acquire)
}

/// A read-only map of the first `len` bytes of a file, guarded against SIGBUS.
pub(crate) struct GuardedMap {
    map: Mmap,
    slot: usize,
}

impl GuardedMap {
    /// Maps `len` bytes of `file`. Fails (and the caller reads instead) if the handler could
    /// not be installed or every slot is taken.
    pub(crate) fn new(file: &File, len: usize) -> io::Result<GuardedMap> {
        if len == 0 || !install() {
            return Err(io::Error::other("guarded maps unavailable"));
        }
        // SAFETY: the map is read-only; a concurrent truncation is handled by the SIGBUS
        // guard registered below before any byte is read, and concurrent writes only change
        // what we read (the content is hashed after it is read, never trusted before).
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        let start = map.as_ptr() as usize;
        for (i, slot) in REGISTRY.iter().enumerate() {
            if slot
                .start
                .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.faulted.store(false, Ordering::Release);
                slot.len.store(len, Ordering::Release);
                slot.start.store(start, Ordering::Release);
                return Ok(GuardedMap { map, slot: i });
            }
        }
        Err(io::Error::other("too many guarded maps open"))
    }

    /// The mapped bytes. After a truncation, the part past the fault reads as zeros and
    /// [`faulted`](Self::faulted) turns true.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Whether the file shrank while mapped (some bytes read were not the file's).
    pub(crate) fn faulted(&self) -> bool {
        REGISTRY[self.slot].faulted.load(Ordering::Acquire)
    }

    /// Drops the pages of a processed range from this process (they stay in the page cache),
    /// so resident memory stays bounded however large the file.
    pub(crate) fn release(&self, offset: usize, len: usize) {
        let page = PAGE_BYTES.load(Ordering::Relaxed);
        let start = offset / page * page;
        let end = (offset + len).min(self.map.len()) / page * page;
        if end > start {
            // SAFETY: MADV_DONTNEED on a shared read-only file map only drops our page table
            // entries; later reads fault the pages back in from the file.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        let slot = &REGISTRY[self.slot];
        slot.len.store(0, Ordering::Release);
        slot.start.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn truncation_while_mapped_reads_zeros_and_is_reported() {
        let mut f = tempfile::tempfile().expect("temp file");
        let data = vec![0xabu8; 1 << 20];
        f.write_all(&data).expect("write");
        let map = GuardedMap::new(&f, data.len()).expect("map");
        assert_eq!(map.bytes()[100], 0xab);
        f.set_len(4096).expect("truncate");
        let sum: u64 = map.bytes().iter().map(|&b| u64::from(b)).sum();
        assert!(map.faulted());
        assert_eq!(sum, 4096 * 0xab, "bytes past the new end read as zeros");
        drop(map);
        let again = GuardedMap::new(&f, 4096).expect("map");
        assert!(!again.faulted(), "a reused slot starts clean");
    }
}
