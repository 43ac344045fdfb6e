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

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes come from the system allocator. sled's buffers and
/// 1 MiB values are above it; requests, entries and replies far below.
pub const LARGE_BLOCK_BYTES: usize = 256 << 10;

/// mimalloc below [`LARGE_BLOCK_BYTES`], the system allocator from there up.
pub struct SplitAllocator;

fn is_large(size: usize) -> bool {
    size >= LARGE_BLOCK_BYTES
}

// SAFETY: each block is allocated and freed by the same allocator, chosen by its size,
// which every call receives (`layout.size()`, and for `realloc` the old layout's size and
// the new size); a `realloc` that crosses the threshold moves the block between the two.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc(layout)
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc_zeroed(layout)
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
