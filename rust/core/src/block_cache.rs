//! A global allocator that keeps a few recently freed large blocks for the next call.
//!
//! A batch call allocates its output columns (megabytes for a large batch), hands them to
//! numpy, and they are freed when the arrays die, usually before the next call. With glibc's
//! allocator, whether that memory stays in the process depends on the heap around it: when the
//! freed columns end up at the top of the heap, `free` gives them back to the kernel (`brk`
//! shrinks) and the next call pays a page fault and a zeroed page for every 4 KiB it writes.
//! Measured on the 12k-line English corpus: 2-thread `encode_batch` 2.0 ms -> 3.2-4.0 ms a call
//! after an unrelated sequence of HF `tokenizers` calls in the same process left the heap that
//! way (`strace`: three `brk` grows and one shrink per call), back to 2.0 ms with this cache.
//!
//! [`BlockCache`] forwards everything to the system allocator except blocks of at least
//! [`LARGE`] bytes: those carry a small header with their usable size, and on `dealloc` up to
//! [`SLOTS`] of them ([`MAX_BYTES`] in all; the oldest go first) are kept instead of freed,
//! for an allocation of between half their size and their size to take again. That memory
//! stays with the process (each DataLoader worker has its own cache) until a later allocation
//! takes it or newer blocks push it out; batches of small texts (columns under 1 MiB) never
//! fill it.
//!
//! The cache is guarded by a flag that is only ever *tried*: a thread that finds it taken
//! goes straight to the system allocator. Nothing waits, so a `fork()` while another thread
//! holds the flag (DataLoader workers) cannot deadlock the child; it only leaves that child
//! without a cache.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Blocks of at least this many bytes go through the cache.
pub const LARGE: usize = 1 << 20;
/// How many freed blocks are kept at most.
pub const SLOTS: usize = 8;
/// How many bytes of freed blocks are kept at most.
pub const MAX_BYTES: usize = 64 << 20;
/// Bytes in front of a large block (its usable size); also the largest alignment a large
/// block gets from the cache (larger alignments go to the system allocator as they are).
const HEADER: usize = 64;

/// Global allocator: the system allocator plus a cache of recently freed large blocks.
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: unimask_core::block_cache::BlockCache = unimask_core::block_cache::BlockCache::new();
/// ```
pub struct BlockCache {
    busy: AtomicBool,
    kept: UnsafeCell<Kept>,
}

/// Freed blocks: `base` pointers (the header's address) and usable sizes, oldest first.
struct Kept {
    base: [*mut u8; SLOTS],
    size: [usize; SLOTS],
    n: usize,
    bytes: usize,
}

// SAFETY: `kept` is only accessed by the thread that set `busy` (acquire/release).
unsafe impl Sync for BlockCache {}

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a block of this layout carries a header (and may come from or go to the cache).
#[inline]
fn is_large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= HEADER
}

/// Layout of the underlying system block of a large block with `size` usable bytes.
#[inline]
fn system_layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

impl BlockCache {
    pub const fn new() -> Self {
        Self {
            busy: AtomicBool::new(false),
            kept: UnsafeCell::new(Kept {
                base: [std::ptr::null_mut(); SLOTS],
                size: [0; SLOTS],
                n: 0,
                bytes: 0,
            }),
        }
    }

    /// Run `f` on the kept blocks if no other thread is using them; `None` otherwise.
    fn try_with<R>(&self, f: impl FnOnce(&mut Kept) -> R) -> Option<R> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        // SAFETY: `busy` was false and is now ours: no other thread touches `kept` until the
        // release below.
        let r = f(unsafe { &mut *self.kept.get() });
        self.busy.store(false, Ordering::Release);
        Some(r)
    }

    /// Number of blocks and bytes kept now (for tests and diagnostics; `None` while busy).
    pub fn kept(&self) -> Option<(usize, usize)> {
        self.try_with(|k| (k.n, k.bytes))
    }

    /// Give every kept block back to the system allocator (when not busy).
    pub fn release_all(&self) {
        let mut freed = [(std::ptr::null_mut(), 0usize); SLOTS];
        let mut m = 0;
        self.try_with(|k| {
            for (slot, (&b, &s)) in freed.iter_mut().zip(k.base.iter().zip(&k.size)).take(k.n) {
                *slot = (b, s);
            }
            m = k.n;
            k.n = 0;
            k.bytes = 0;
        });
        for &(base, size) in &freed[..m] {
            // SAFETY: kept blocks came from `System` with `system_layout(size)`.
            unsafe { free_block(base, size) };
        }
    }

    /// A large block with room for `size` bytes: a kept one (the smallest that fits and is
    /// at most twice `size`) or a new one. Returns the usable pointer.
    unsafe fn alloc_large(&self, size: usize, zeroed: bool) -> *mut u8 {
        if !zeroed {
            let reused = self
                .try_with(|k| {
                    let mut best: Option<usize> = None;
                    for i in 0..k.n {
                        let s = k.size[i];
                        if s >= size && s / 2 <= size && best.is_none_or(|b| s < k.size[b]) {
                            best = Some(i);
                        }
                    }
                    best.map(|i| {
                        let (base, s) = (k.base[i], k.size[i]);
                        // Keep the order (oldest first) of the others.
                        k.base.copy_within(i + 1..k.n, i);
                        k.size.copy_within(i + 1..k.n, i);
                        k.n -= 1;
                        k.bytes -= s;
                        base
                    })
                })
                .flatten();
            if let Some(base) = reused {
                return base.add(HEADER);
            }
        }
        let Some(layout) = system_layout(size) else {
            return std::ptr::null_mut();
        };
        let base = if zeroed {
            System.alloc_zeroed(layout)
        } else {
            System.alloc(layout)
        };
        if base.is_null() {
            return base;
        }
        (base as *mut usize).write(size);
        base.add(HEADER)
    }

    /// Keep the large block at `ptr` for reuse, or free it.
    unsafe fn free_large(&self, ptr: *mut u8) {
        let base = ptr.sub(HEADER);
        let size = (base as *const usize).read();
        let mut evicted = [(std::ptr::null_mut(), 0usize); SLOTS];
        let mut m = 0;
        let kept = self
            .try_with(|k| {
                if size > MAX_BYTES {
                    return false;
                }
                // Make room: the oldest blocks go.
                let mut drop = 0;
                while k.n - drop == SLOTS || k.bytes + size > MAX_BYTES {
                    evicted[m] = (k.base[drop], k.size[drop]);
                    m += 1;
                    k.bytes -= k.size[drop];
                    drop += 1;
                }
                k.base.copy_within(drop..k.n, 0);
                k.size.copy_within(drop..k.n, 0);
                k.n -= drop;
                k.base[k.n] = base;
                k.size[k.n] = size;
                k.n += 1;
                k.bytes += size;
                true
            })
            .unwrap_or(false);
        if !kept {
            free_block(base, size);
        }
        for &(b, s) in &evicted[..m] {
            free_block(b, s);
        }
    }
}

/// Free a large block's underlying system block.
unsafe fn free_block(base: *mut u8, size: usize) {
    if let Some(layout) = system_layout(size) {
        System.dealloc(base, layout);
    }
}

unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            self.alloc_large(layout.size(), false)
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            // Fresh memory from the system is zero without being written; a kept block
            // would need clearing, so zeroed blocks do not come from the cache.
            self.alloc_large(layout.size(), true)
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout) {
            self.free_large(ptr)
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        match (is_large(layout), is_large(new_layout)) {
            (false, false) => System.realloc(ptr, layout, new_size),
            (true, true) => {
                let base = ptr.sub(HEADER);
                let size = (base as *const usize).read();
                if new_size <= size && new_size >= size / 2 {
                    return ptr; // fits in place, and not mostly empty
                }
                // The system allocator can grow or shrink in place (`mremap` for big blocks).
                let (Some(old), Some(_)) = (system_layout(size), system_layout(new_size)) else {
                    return std::ptr::null_mut();
                };
                let nb = System.realloc(base, old, new_size + HEADER);
                if nb.is_null() {
                    return nb;
                }
                (nb as *mut usize).write(new_size);
                nb.add(HEADER)
            }
            _ => {
                // Crossing the large/small line: the header comes or goes, so move.
                let np = self.alloc(new_layout);
                if !np.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, np, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                np
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lay(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn a_freed_large_block_is_taken_again() {
        let c = BlockCache::new();
        unsafe {
            let a = c.alloc(lay(3 << 20, 8));
            assert!(!a.is_null());
            assert_eq!(a as usize % HEADER, 0);
            a.write_bytes(7, 3 << 20);
            c.dealloc(a, lay(3 << 20, 8));
            assert_eq!(c.kept(), Some((1, 3 << 20)));
            // Between half the size and the size: the same block.
            let b = c.alloc(lay(2 << 20, 4));
            assert_eq!(a, b);
            assert_eq!(c.kept(), Some((0, 0)));
            // Freed with the layout it was asked with; the header knows the real size.
            c.dealloc(b, lay(2 << 20, 4));
            assert_eq!(c.kept(), Some((1, 3 << 20)));
            // Less than half: a new block.
            let d = c.alloc(lay(LARGE, 8));
            assert_ne!(d, a);
            c.dealloc(d, lay(LARGE, 8));
        }
        c.release_all();
        assert_eq!(c.kept(), Some((0, 0)));
    }

    #[test]
    fn the_smallest_fitting_block_is_taken() {
        let c = BlockCache::new();
        unsafe {
            let sizes = [8 << 20, 5 << 20, 6 << 20];
            let ps: Vec<*mut u8> = sizes.iter().map(|&s| c.alloc(lay(s, 8))).collect();
            for (&p, &s) in ps.iter().zip(&sizes) {
                c.dealloc(p, lay(s, 8));
            }
            let q = c.alloc(lay(5 << 20, 8));
            assert_eq!(q, ps[1]);
            let r = c.alloc(lay(5 << 20, 8));
            assert_eq!(r, ps[2]);
            c.dealloc(q, lay(5 << 20, 8));
            c.dealloc(r, lay(5 << 20, 8));
        }
        c.release_all();
    }

    #[test]
    fn the_cache_is_bounded_and_the_oldest_blocks_go_first() {
        let c = BlockCache::new();
        unsafe {
            let ps: Vec<*mut u8> = (0..SLOTS + 3).map(|_| c.alloc(lay(LARGE, 8))).collect();
            for &p in &ps {
                c.dealloc(p, lay(LARGE, 8));
            }
            assert_eq!(c.kept(), Some((SLOTS, SLOTS * LARGE)));
            // The three oldest were freed: the newest are the ones handed out.
            let got: Vec<*mut u8> = (0..SLOTS).map(|_| c.alloc(lay(LARGE, 8))).collect();
            for p in &got {
                assert!(ps[3..].contains(p));
            }
            for &p in &got {
                c.dealloc(p, lay(LARGE, 8));
            }
            // Bytes bound: two 40 MiB blocks do not both fit in 64 MiB.
            let big = 40 << 20;
            let x = c.alloc(lay(big, 8));
            let y = c.alloc(lay(big, 8));
            c.dealloc(x, lay(big, 8));
            c.dealloc(y, lay(big, 8));
            let (n, bytes) = c.kept().unwrap();
            assert!(
                bytes <= MAX_BYTES && n <= SLOTS,
                "{n} blocks, {bytes} bytes"
            );
            // A block larger than the whole cache is not kept.
            let z = c.alloc(lay(MAX_BYTES + 1, 8));
            c.dealloc(z, lay(MAX_BYTES + 1, 8));
            assert!(c.kept().unwrap().1 <= MAX_BYTES);
        }
        c.release_all();
    }

    #[test]
    fn realloc_keeps_contents_across_sizes() {
        let c = BlockCache::new();
        unsafe {
            let mut l = lay(1000, 8);
            let mut p = c.alloc(l);
            for i in 0..1000 {
                p.add(i).write(i as u8);
            }
            // small -> large -> larger -> in place -> small
            for &ns in &[3 << 20, 9 << 20, 6 << 20, 500] {
                p = c.realloc(p, l, ns);
                assert!(!p.is_null());
                for i in 0..500 {
                    assert_eq!(p.add(i).read(), i as u8, "byte {i} after realloc to {ns}");
                }
                l = lay(ns, 8);
            }
            c.dealloc(p, l);
        }
        c.release_all();
    }

    #[test]
    fn zeroed_and_over_aligned_blocks() {
        let c = BlockCache::new();
        unsafe {
            let a = c.alloc(lay(2 << 20, 8));
            a.write_bytes(0xff, 2 << 20);
            c.dealloc(a, lay(2 << 20, 8));
            let z = c.alloc_zeroed(lay(2 << 20, 8));
            assert!(std::slice::from_raw_parts(z, 2 << 20)
                .iter()
                .all(|&b| b == 0));
            c.dealloc(z, lay(2 << 20, 8));
            // Alignment above the header's goes to the system allocator untouched.
            let o = c.alloc(lay(2 << 20, 4096));
            assert_eq!(o as usize % 4096, 0);
            let o2 = c.realloc(o, lay(2 << 20, 4096), 4 << 20);
            assert_eq!(o2 as usize % 4096, 0);
            c.dealloc(o2, lay(4 << 20, 4096));
        }
        c.release_all();
    }

    #[test]
    fn threads_share_the_cache_without_losing_blocks() {
        let c = BlockCache::new();
        std::thread::scope(|s| {
            for t in 0..4 {
                let c = &c;
                s.spawn(move || unsafe {
                    for i in 0..200 {
                        let size = LARGE + ((i * 7 + t) % 5) * 300_000;
                        let p = c.alloc(lay(size, 8));
                        p.write_bytes(t as u8, size);
                        assert!(std::slice::from_raw_parts(p, size)
                            .iter()
                            .all(|&b| b == t as u8));
                        c.dealloc(p, lay(size, 8));
                    }
                });
            }
        });
        let (n, bytes) = c.kept().unwrap();
        assert!(n <= SLOTS && bytes <= MAX_BYTES);
        c.release_all();
    }

    #[test]
    fn a_busy_cache_falls_back_to_the_system() {
        let c = BlockCache::new();
        c.busy.store(true, Ordering::SeqCst); // as if another thread (or a pre-fork one) held it
        unsafe {
            let p = c.alloc(lay(2 << 20, 8));
            assert!(!p.is_null());
            c.dealloc(p, lay(2 << 20, 8)); // freed, not kept, and no waiting
        }
        assert_eq!(c.kept(), None);
        c.busy.store(false, Ordering::SeqCst);
        assert_eq!(c.kept(), Some((0, 0)));
    }
}
