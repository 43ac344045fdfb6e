//! SIGKILL in the middle of writing a snapshot leaves the previous one intact and usable.
//!
//! The test re-executes its own binary as a child (selected by an environment variable)
//! that finishes one snapshot, reports it, then writes a second one forever. The parent
//! SIGKILLs it once the second one is several MiB along, reopens the store, and checks that
//! the first snapshot is the latest verified one and the temp file is gone.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use storage::snapshot::SnapshotStore;
use storage::SnapshotMeta;

const CHILD_ENV: &str = "RAFTLOG_SNAPSHOT_CRASH_CHILD_DIR";
const FIRST_LEN: usize = 3 * 1024 * 1024 + 7;

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(40503) >> 7) as u8
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: index,
        last_term: 1,
        ..SnapshotMeta::default()
    }
}

#[test]
fn snapshot_crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // Only does something when re-executed by the parent test.
    };
    let store = SnapshotStore::open(&dir).unwrap();
    let data: Vec<u8> = (0..FIRST_LEN).map(byte).collect();
    let mut w = store.begin(meta(100)).unwrap();
    w.write_chunk(&data).unwrap();
    w.finish().unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "first done").unwrap();
    out.flush().unwrap();
    let mut w = store.begin(meta(200)).unwrap();
    let mut written = 0usize;
    loop {
        w.write_chunk(&data[..65_000]).unwrap();
        written += 65_000;
        if written % (1024 * 1024) < 65_000 {
            writeln!(out, "second at {written}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn sigkill_mid_snapshot_keeps_the_previous_one() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshots");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "snapshot_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_done = false;
    let mut progress = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints "test NAME ... " without a newline before running a test.
        if line.ends_with("first done") {
            first_done = true;
        } else if line.contains("second at") {
            progress += 1;
            if progress >= 4 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix.
    child.wait().unwrap();
    assert!(first_done && progress >= 4, "child stopped early");
    let temp_before = std::fs::read_dir(&path)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(
        temp_before, 1,
        "the killed child should have left its temp file"
    );

    let store = SnapshotStore::open(&path).unwrap();
    let names: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    let latest = store.latest_verified().unwrap().unwrap();
    assert_eq!(latest, meta(100));
    let mut data = Vec::new();
    store
        .open_reader(&latest)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    assert_eq!(data.len(), FIRST_LEN);
    assert!(data.iter().enumerate().all(|(i, b)| *b == byte(i)));
}
