//! The binary's allocator (issue 14): mimalloc for the many small allocations of the
//! request path, the system allocator for large blocks.
//!
//! A profile of the leader at 64-client puts spent about 18% of its samples in glibc's
//! malloc, free and their chunk consolidation: every request allocates its body, command,
//! entry and reply on one thread and frees them on another. mimalloc's thread-local free
//! lists make those calls cheap (cluster CPU per put 0.92x, docs/BENCHMARKS.md).
//!
//! Large blocks stay with glibc because of how each zeroes memory: glibc serves a large
//! zeroed block from a fresh mapping, whose pages stay untouched (and out of the RSS) until
//! written, while mimalloc writes the zeros. The stable store (sled) allocates several
//! zeroed I/O buffers of megabytes that it fills only partly, so with mimalloc alone an idle
//! node held about 50 MiB of heap instead of 3 MiB (`benches/memory-flat.sh`).
//!
//! The split is by size alone, which Rust's allocator contract makes sound: `dealloc` and
//! `realloc` receive the layout the block was allocated with, so every call can tell which
//! allocator owns a block. Only the binary installs it; an embedder of the library keeps
//! its own allocator.
//!
//! Small blocks go to `mi_malloc` itself rather than through the mimalloc crate's
//! allocator, which calls `mi_malloc_aligned` for every layout. In mimalloc 3 that call
//! takes its fast path only for a block of at most 1 KiB with a free slot at hand, and
//! otherwise over-allocates and aligns inside the block unless the size class is a power
//! of two, whatever the alignment asked: HTTP futures boxed by the router (1–3 KiB),
//! hyper's read buffer and the WAL's batch vectors paid that on every request. Counted by
//! callgrind on a one-node cluster taking 2,000 puts: 16 such calls per request, ~200
//! instructions each against ~30 for `mi_malloc` (docs/BENCHMARKS.md, "The router's
//! layers and the allocator").

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;

/// Blocks of at least this many bytes come from the system allocator. sled's buffers and
/// 1 MiB values are above it; requests, entries and replies far below.
pub const LARGE_BLOCK_BYTES: usize = 256 << 10;

/// mimalloc below [`LARGE_BLOCK_BYTES`], the system allocator from there up.
pub struct SplitAllocator;

fn is_large(size: usize) -> bool {
    size >= LARGE_BLOCK_BYTES
}

/// The alignment every `mi_malloc` block of at least this many bytes has (mimalloc's
/// `MI_MAX_ALIGN_SIZE`: on 64-bit targets block sizes are multiples of 16 from 16 bytes
/// up, and blocks of 8 bytes are 8-aligned).
const MI_MALLOC_ALIGN: usize = 16;

/// Whether a plain `mi_malloc(size)` is aligned enough for `layout`: an alignment up to 16
/// that the size itself reaches (a 16-aligned layout of 8 bytes would get an 8-byte block).
fn plain_malloc_fits(size: usize, align: usize) -> bool {
    align <= MI_MALLOC_ALIGN && align <= size
}

// SAFETY: each block is allocated and freed by the same allocator, chosen by its size,
// which every call receives (`layout.size()`, and for `realloc` the old layout's size and
// the new size); a `realloc` that crosses the threshold moves the block between the two.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc(layout)
        } else if plain_malloc_fits(layout.size(), layout.align()) {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc_zeroed(layout)
        } else if plain_malloc_fits(layout.size(), layout.align()) {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size()) {
            System.dealloc(ptr, layout)
        } else {
            mimalloc::MiMalloc.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (is_large(layout.size()), is_large(new_size)) {
            (true, true) => System.realloc(ptr, layout, new_size),
            // mimalloc frees and resizes any of its blocks, however it was aligned.
            (false, false) if plain_malloc_fits(new_size, layout.align()) => {
                libmimalloc_sys::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            }
            (false, false) => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded up to the alignment,
                // does not overflow isize, which is all `from_size_align_unchecked` needs.
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

/// Turns transparent huge pages off for the whole process (`PR_SET_THP_DISABLE`, kept
/// across `fork` and `exec`), which is what mimalloc itself does when its `allow_thp`
/// option is off. Call it first thing in `main`: the flag applies to mappings made before
/// it as well, at their next page fault.
///
/// mimalloc 3 advises its 1 GiB arena `MADV_HUGEPAGE` and, a second after memory is freed,
/// gives it back with `MADV_DONTNEED`; the next allocation there faults a whole 2 MiB page
/// in, which the kernel zeroes on the faulting thread, with preemption points inside the
/// zeroing. Under a storm of 1 MiB writes beside other CPU load (tests/overload_bounds.rs
/// with two busy loops and a disk writer, `perf sched timehist`), each node's single
/// runtime worker was switched out inside `folio_zero_user` 690 times in 12 s, for 40–60
/// ms each time, and the raft loop on that worker went without running long enough for
/// followers to time out (2–4 s election timeouts) and for forwarded writes to answer 504.
/// With the flag set, none (docs/BENCHMARKS.md, "Huge pages off").
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with plain integer arguments; nothing is read or written through them.
    // A kernel without the option refuses it (EINVAL), which leaves things as they were.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks grown and shrunk across the threshold keep their bytes and are freed by the
    /// allocator that owns them (a mismatch aborts the test process under glibc's checks).
    #[test]
    fn blocks_keep_their_bytes_across_the_threshold() {
        let a = SplitAllocator;
        let sizes = [
            16,
            LARGE_BLOCK_BYTES - 1,
            LARGE_BLOCK_BYTES,
            4 * LARGE_BLOCK_BYTES,
            100,
            3 * LARGE_BLOCK_BYTES,
            LARGE_BLOCK_BYTES + 1,
            8,
        ];
        unsafe {
            let mut layout = Layout::from_size_align(sizes[0], 16).unwrap();
            let mut ptr = a.alloc(layout);
            assert!(!ptr.is_null());
            std::ptr::write_bytes(ptr, 0xA5, layout.size());
            for &size in &sizes[1..] {
                ptr = a.realloc(ptr, layout, size);
                assert!(!ptr.is_null(), "realloc to {size}");
                assert_eq!(ptr as usize % 16, 0, "alignment kept at {size}");
                let kept = layout.size().min(size);
                let bytes = std::slice::from_raw_parts(ptr, kept);
                assert!(bytes.iter().all(|&b| b == 0xA5), "bytes lost at {size}");
                layout = Layout::from_size_align(size, 16).unwrap();
                std::ptr::write_bytes(ptr, 0xA5, size);
            }
            a.dealloc(ptr, layout);
        }
    }

    /// Every size class and alignment a Rust layout can ask of the small-block side gets
    /// a block aligned as asked, from `alloc`, `alloc_zeroed` and `realloc` alike, including
    /// the layouts that `mi_malloc` alone could not serve (16-aligned 8-byte blocks, 64-byte
    /// alignment).
    #[test]
    fn small_blocks_are_aligned_as_asked() {
        let a = SplitAllocator;
        let sizes = [1, 8, 12, 16, 24, 40, 100, 1000, 1500, 3000, 70_000];
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for &size in &sizes {
                unsafe {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let mut blocks = Vec::new();
                    // Several at once, so blocks come from different slots of a page.
                    for zeroed in [false, true, false, true] {
                        let ptr = if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        };
                        assert!(!ptr.is_null());
                        assert_eq!(ptr as usize % align, 0, "{size} bytes aligned to {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(ptr, size)
                                .iter()
                                .all(|&b| b == 0));
                        }
                        std::ptr::write_bytes(ptr, 0x5A, size);
                        blocks.push(ptr);
                    }
                    for ptr in blocks {
                        let grown = a.realloc(ptr, layout, size * 3);
                        assert!(!grown.is_null());
                        assert_eq!(
                            grown as usize % align,
                            0,
                            "{size} → {} aligned to {align}",
                            size * 3
                        );
                        assert!(std::slice::from_raw_parts(grown, size)
                            .iter()
                            .all(|&b| b == 0x5A));
                        a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    }
                }
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides() {
        let a = SplitAllocator;
        for size in [64, LARGE_BLOCK_BYTES, 2 * LARGE_BLOCK_BYTES] {
            unsafe {
                let layout = Layout::from_size_align(size, 8).unwrap();
                let ptr = a.alloc_zeroed(layout);
                assert!(!ptr.is_null());
                assert!(std::slice::from_raw_parts(ptr, size)
                    .iter()
                    .all(|&b| b == 0));
                a.dealloc(ptr, layout);
            }
        }
    }
}
