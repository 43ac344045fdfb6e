//! Injected I/O faults at the storage layer's durable steps, for crash tests.
//!
//! Each name below sits right before one operation that Raft's durability depends on. When
//! a test arms it (with the `fail` crate's action syntax), the operation is not done:
//! - `return` / `return(ENOSPC)`: it fails with that `io::Error` (`EIO` when no value is
//!   given), exactly as if the system call had, so the caller's real error path runs and the
//!   error names the operation and the file;
//! - `panic`: the process dies there, e.g. after the WAL write and before its fdatasync
//!   (`wal::fdatasync`), as a crash at that instant would;
//! - anything else `fail` offers (`sleep(ms)`, `1*return->off`, ...).
//!
//! The points are compiled in only with the `failpoints` feature (the process tests build
//! with it, `cargo build --release` does not); without it [`inject`] is an inlined `Ok(())`
//! and [`configure`] refuses, naming the feature.
//!
//! | name                   | right before                                                |
//! |------------------------|-------------------------------------------------------------|
//! | `wal::write`           | the `pwritev` of a run of records into the active segment  |
//! | `wal::fdatasync`       | the `fdatasync` that makes that run durable                 |
//! | `wal::segment_prepare` | creating a new segment file (zeros or `fallocate`, synced) |
//! | `wal::segment_rename`  | renaming a prepared segment to its segment name            |
//! | `wal::dir_fsync`       | every fsync of the WAL directory (roll, truncate, compact, `wal.meta`) |
//! | `wal::compact`         | a prefix compaction (before `wal.meta` moves)              |
//! | `wal::meta_write`      | writing `wal.meta.tmp` (compaction, truncation, open)      |
//! | `wal::meta_rename`     | renaming it over `wal.meta`                                 |
//! | `wal::segment_recycle` | renaming a compacted segment to a `.prep` name for reuse   |
//! | `snapshot::write`      | each write into a snapshot temp file (taken or received)   |
//! | `snapshot::fsync`      | the fsync of a complete snapshot temp file                 |
//! | `snapshot::rename`     | renaming it into place                                      |
//! | `snapshot::dir_fsync`  | every fsync of the snapshot directory (install, open, quarantine) |
//! | `stable::save`         | the fsyncs that make a stable-store write (term, vote, ...) durable, after sled applied it |

use std::io;

/// Every failpoint the storage layer evaluates; [`configure`] accepts only these, so a
/// typo in a test fails loudly instead of arming nothing.
pub const NAMES: &[&str] = &[
    "wal::write",
    "wal::fdatasync",
    "wal::segment_prepare",
    "wal::segment_rename",
    "wal::dir_fsync",
    "wal::compact",
    "wal::meta_write",
    "wal::meta_rename",
    "wal::segment_recycle",
    "snapshot::write",
    "snapshot::fsync",
    "snapshot::rename",
    "snapshot::dir_fsync",
    "stable::save",
];

/// Whether this build evaluates failpoints (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// `Err` if the failpoint `name` is armed with `return` (panics if armed with `panic`);
/// `Ok(())` otherwise, and always without the feature.
#[inline]
pub fn inject(name: &'static str) -> io::Result<()> {
    #[cfg(feature = "failpoints")]
    if let Some(value) = fail::eval(name, |value| value) {
        return Err(injected_error(name, value.as_deref()));
    }
    let _ = name;
    Ok(())
}

/// The error an armed `return(VALUE)` produces: the bare errno (by name), exactly what the
/// system call would return, so that callers which tell errors apart (a full disk from a
/// failing one) take the same path as for a real fault. The injection itself is logged.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected_error(name: &str, value: Option<&str>) -> io::Error {
    let errno = match value.unwrap_or("EIO") {
        "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "EDQUOT" => libc::EDQUOT,
        "EROFS" => libc::EROFS,
        other => {
            return io::Error::other(format!("injected by failpoint {name}: {other}"));
        }
    };
    tracing::warn!(failpoint = name, errno, "injecting an I/O error");
    io::Error::from_raw_os_error(errno)
}

/// Arms failpoint `name` with `actions` (the `fail` crate's syntax, e.g. `return`,
/// `return(ENOSPC)`, `panic`, `1*return->off`); `off` disarms it.
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    if !NAMES.contains(&name) {
        return Err(format!(
            "unknown failpoint {name:?}; the storage layer has {}",
            NAMES.join(", ")
        ));
    }
    #[cfg(feature = "failpoints")]
    {
        fail::cfg(name, actions)
            .map_err(|e| format!("failpoint {name}: bad actions {actions:?}: {e}"))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = actions;
        Err(format!(
            "failpoint {name} cannot be armed: this build lacks the `failpoints` feature \
             (build with `--features failpoints`, or run it from `cargo test`)"
        ))
    }
}

/// Arms the failpoints listed in `spec`, the `fail` crate's `FAILPOINTS` format
/// (`name=actions;name=actions`), e.g. from the environment at node start.
pub fn configure_all(spec: &str) -> Result<(), String> {
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, actions)) = item.split_once('=') else {
            return Err(format!(
                "failpoint setting {item:?} is not NAME=ACTIONS (e.g. wal::fdatasync=return)"
            ));
        };
        configure(name.trim(), actions.trim())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_malformed_settings_are_refused() {
        let unknown = configure("wal::fsync", "return").unwrap_err();
        assert!(unknown.contains("unknown failpoint") && unknown.contains("wal::fdatasync"));
        let malformed = configure_all("wal::fdatasync").unwrap_err();
        assert!(malformed.contains("NAME=ACTIONS"), "{malformed}");
    }

    #[test]
    fn injected_errors_are_the_named_errno() {
        let full = injected_error("wal::write", Some("ENOSPC"));
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(
            injected_error("wal::fdatasync", None).raw_os_error(),
            Some(libc::EIO)
        );
        let other = injected_error("wal::fdatasync", Some("torn"));
        assert!(other.to_string().contains("wal::fdatasync"), "{other}");
    }

    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn without_the_feature_nothing_can_be_armed() {
        let refused = configure("wal::fdatasync", "return").unwrap_err();
        assert!(refused.contains("`failpoints` feature"), "{refused}");
        assert!(inject("wal::fdatasync").is_ok());
    }
}
