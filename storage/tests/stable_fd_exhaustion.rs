//! Rule: once open, the stable store and the WAL make a write durable without opening a
//! file descriptor, so a process whose descriptors are all taken (EMFILE: idle client
//! sockets, issue 12) still persists a new term and vote at an election and keeps
//! appending. Before the fix the save listed `blobs/` with `read_dir` and failed with
//! "list sled blob directory ...: Too many open files", which stopped the node.
//!
//! The only test in this binary, because it lowers the process's `RLIMIT_NOFILE` and
//! takes every descriptor left.

use std::fs::File;

use bytes::Bytes;
use storage::stable::StableStore;
use storage::wal::{Wal, WalOptions};
use storage::{Entry, EntryKind, HardState};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        payload: Bytes::from(format!("entry {index}")),
    }
}

/// Takes file descriptors until none is left; returns them (dropping them frees them).
fn take_every_descriptor() -> Vec<File> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a stack value. A low soft limit keeps the hoard small.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(512);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let mut hoard = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(file) => hoard.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return hoard,
            Err(e) => panic!("opening /dev/null failed: {e}"),
        }
    }
}

#[test]
fn stable_store_and_wal_persist_with_every_file_descriptor_taken() {
    let dir = tempfile::tempdir().unwrap();
    let stable_dir = dir.path().join("stable");
    let wal_dir = dir.path().join("wal");
    let store = StableStore::open(&stable_dir).unwrap();
    // The first save creates the generation witness file; a node does it at bootstrap.
    store
        .save_hard_state(&HardState {
            term: 1,
            voted_for: Some(1),
        })
        .unwrap();
    let wal = Wal::open(&wal_dir, WalOptions::default()).unwrap();
    wal.append(&[entry(1, 1)]).unwrap();

    let hoard = take_every_descriptor();
    assert!(
        File::open("/dev/null").is_err(),
        "the test should have left no descriptor"
    );
    let mut last_saved = 1;
    let mut failures = Vec::new();
    for term in 2..=20 {
        let hard_state = HardState {
            term,
            voted_for: Some(term % 3 + 1),
        };
        match store.save_hard_state(&hard_state) {
            Ok(()) => last_saved = term,
            Err(e) => {
                failures.push(format!("term {term}: {e}"));
                break;
            }
        }
    }
    let appended = wal.append(&[entry(2, 20)]);
    drop(hoard);
    assert!(
        failures.is_empty(),
        "saving a term with no descriptor left failed: {failures:?}"
    );
    appended.expect("WAL append with no descriptor left");

    // What was acknowledged is there after reopening.
    drop(store);
    drop(wal);
    let store = StableStore::open(&stable_dir).unwrap();
    assert_eq!(
        store.hard_state().unwrap(),
        HardState {
            term: last_saved,
            voted_for: Some(last_saved % 3 + 1)
        }
    );
    let wal = Wal::open(&wal_dir, WalOptions::default()).unwrap();
    assert_eq!(wal.last_index(), 2);
}
