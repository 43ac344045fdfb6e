//! A hard state acknowledged by `save_hard_state` survives SIGKILL of the process.
//!
//! The test re-executes its own binary as a child (selected by an environment variable)
//! that saves ever-increasing terms and reports each one on stdout only after
//! `save_hard_state` returned. The parent SIGKILLs it mid-stream, reopens the store and
//! checks that the last reported term (or a later one) is there and that the vote matches.
//! SIGKILL keeps the page cache, so this checks that nothing is left in user-space buffers
//! and that sled recovers the store; power-loss durability rests on the fsyncs counted in
//! the unit tests.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storage::stable::StableStore;
use storage::HardState;

const CHILD_ENV: &str = "RAFTLOG_STABLE_CRASH_CHILD_DIR";

/// The vote a child casts in `term`: a function of the term, so the parent can check the
/// pair was written together.
fn vote_for(term: u64) -> u64 {
    term % 5 + 1
}

#[test]
fn stable_crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // Only does something when re-executed by the parent test.
    };
    let store = StableStore::open(&dir).unwrap();
    store.bind_identity("crash", 1).unwrap();
    let mut term = store.hard_state().unwrap().term;
    let stdout = std::io::stdout();
    loop {
        term += 1;
        store
            .save_hard_state(&HardState {
                term,
                voted_for: Some(vote_for(term)),
            })
            .unwrap();
        let mut out = stdout.lock();
        writeln!(out, "saved {term}").unwrap();
        out.flush().unwrap();
    }
}

fn run_child_and_kill(dir: &std::path::Path, kill_after_saves: u64) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "stable_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last_acked = 0u64;
    let mut seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints "test NAME ... " without a newline before running a test.
        if let Some((_, term)) = line.split_once("saved ") {
            last_acked = term.trim().parse().unwrap();
            seen += 1;
            if seen >= kill_after_saves {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "child too slow: {seen} saves in 60 s"
        );
    }
    child.kill().unwrap(); // SIGKILL on Unix.
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "child should have been killed, got {status}"
    );
    assert!(
        seen >= kill_after_saves,
        "child exited early after {seen} saves"
    );
    last_acked
}

#[test]
fn hard_state_survives_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stable");
    let mut previous = 0;
    // Kill it several times at different points, reopening in between.
    for round in 0..3u64 {
        let acked = run_child_and_kill(&path, 20 + round * 13);
        assert!(
            acked > previous,
            "round {round}: acked {acked} after {previous}"
        );
        let store = StableStore::open(&path).unwrap();
        let hs = store.hard_state().unwrap();
        assert!(
            hs.term >= acked,
            "round {round}: acknowledged term {acked} lost, store has {hs:?}"
        );
        // The child kept saving (and its reports queued in the pipe) until the kill
        // landed, so the store may be ahead of the last report we read; never behind.
        assert_eq!(
            hs.voted_for,
            Some(vote_for(hs.term)),
            "round {round}: {hs:?}"
        );
        assert_eq!(store.identity().unwrap(), Some(("crash".to_string(), 1)));
        previous = hs.term;
    }
}
