//! Snapshots are streamed: writing and reading a multi-MiB snapshot holds at most a frame
//! or so in memory. A counting global allocator measures the peak heap growth.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

use storage::snapshot::SnapshotStore;
use storage::SnapshotMeta;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth above the level at the call, while running `f`.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

const TOTAL: usize = 16 * 1024 * 1024;
const LIMIT: usize = 1024 * 1024;

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[test]
fn sixteen_mib_snapshot_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let meta = SnapshotMeta {
        last_index: 1000,
        last_term: 2,
        ..SnapshotMeta::default()
    };
    let mut chunk = vec![0u8; 100_000];
    let (meta, write_peak) = peak_growth(|| {
        let mut w = store.begin(meta).unwrap();
        let mut written = 0;
        while written < TOTAL {
            let n = chunk.len().min(TOTAL - written);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = byte(written + k);
            }
            w.write_chunk(&chunk[..n]).unwrap();
            written += n;
        }
        w.finish().unwrap()
    });
    let (read, read_peak) = peak_growth(|| {
        let mut r = store.open_reader(&meta).unwrap();
        let mut buf = [0u8; 8192];
        let mut pos = 0usize;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, byte(pos + k), "byte {}", pos + k);
            }
            pos += n;
        }
        pos
    });
    assert_eq!(read, TOTAL);
    let (_, transfer_peak) = peak_growth(|| {
        let other = SnapshotStore::open(dir.path().join("follower")).unwrap();
        let mut rx = other.begin_receive(meta.clone()).unwrap();
        let mut offset = 0;
        loop {
            let (bytes, done) = store.read_chunk(&meta, offset, 256 * 1024).unwrap();
            rx.write_chunk(offset, &bytes).unwrap();
            offset += bytes.len() as u64;
            if done {
                break;
            }
        }
        rx.finish().unwrap();
    });
    println!(
        "peak heap growth: write {write_peak} B, read {read_peak} B, transfer {transfer_peak} B"
    );
    assert!(
        write_peak < LIMIT,
        "writing used {write_peak} bytes of heap"
    );
    assert!(read_peak < LIMIT, "reading used {read_peak} bytes of heap");
    assert!(
        transfer_peak < LIMIT,
        "transfer used {transfer_peak} bytes of heap"
    );
}
