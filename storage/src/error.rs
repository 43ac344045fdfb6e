//! The storage crate's one error type. Variants carry what an operator needs to act:
//! which file, which offset, which index.

use std::path::PathBuf;

/// Result alias for the storage crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An index outside the entries a log holds. Shared by the WAL and by the Raft core's
/// `LogStorage`, so that both say the same thing for the same situation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotInLog {
    /// The entry was compacted into a snapshot.
    #[error("entry {index} is compacted (the log starts at {first_index})")]
    Compacted {
        /// The index asked for.
        index: u64,
        /// The first index still in the log.
        first_index: u64,
    },
    /// The entry is beyond the end of the log.
    #[error("entry {index} is beyond the end of the log (last index {last_index})")]
    Unavailable {
        /// The index asked for.
        index: u64,
        /// The last index in the log.
        last_index: u64,
    },
}

/// Everything that can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error {context} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "fdatasync segment".
        context: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Data on disk failed verification somewhere other than a torn tail: refusing to
    /// guess what was lost.
    #[error(
        "corruption in {} at offset {offset}{}: {reason}; the log cannot be opened safely. \
         Restore this node's data directory from a backup, or remove it and let the node \
         rejoin as a new member",
        file.display(),
        index.map(|i| format!(" (near entry {i})")).unwrap_or_default()
    )]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged record within the file.
        offset: u64,
        /// The index of the entry expected there, when known.
        index: Option<u64>,
        /// What check failed.
        reason: String,
    },

    /// A file does not start with the expected magic and version.
    #[error("{} is not a raftlog {what} file: {reason}", file.display())]
    BadHeader {
        /// The offending file.
        file: PathBuf,
        /// "WAL segment", "snapshot", ...
        what: &'static str,
        /// What was found instead.
        reason: String,
    },

    /// The index is outside the entries the log holds.
    #[error(transparent)]
    NotInLog(#[from] NotInLog),

    /// An append did not continue the log where it ends.
    #[error("append at index {got} does not follow the last index {last_index}")]
    NonContiguous {
        /// First index of the rejected batch.
        got: u64,
        /// Last index in the log.
        last_index: u64,
    },

    /// The sled stable store failed.
    #[error("stable store {}: {source}", path.display())]
    Stable {
        /// The sled directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: sled::Error,
    },

    /// A value in the stable store could not be decoded.
    #[error(
        "stable store {}: key {key:?} is corrupt ({reason}); refusing to start with defaults",
        path.display()
    )]
    StableCorrupt {
        /// The sled directory.
        path: PathBuf,
        /// The key whose value is bad.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },

    /// A snapshot file failed its checksum or framing.
    #[error("snapshot {} is corrupt: {reason}", file.display())]
    SnapshotCorrupt {
        /// The snapshot file.
        file: PathBuf,
        /// What check failed.
        reason: String,
    },

    /// The WAL was closed (or its writer failed earlier and refuses further appends).
    #[error("the write-ahead log is closed: {reason}")]
    Closed {
        /// Why.
        reason: String,
    },

    /// The filesystem ran out of space (ENOSPC or EDQUOT) at a point the store can go on
    /// from: nothing of the refused write is durable, no fsync failed on a file the store
    /// keeps, the files describe the store as it was (or, where both are valid, as it
    /// would have been), and the same write may be retried once space is freed
    /// (`crate::space` explains which failures qualify).
    #[error(
        "no space left on the device: {context} {} failed; the filesystem holding it has {}; \
         nothing of this write was stored. Free space on that filesystem (or grow it): \
         writes resume on their own",
        path.display(),
        crate::space::describe_free_bytes(*free_bytes)
    )]
    NoSpace {
        /// What was being done, e.g. "prepare WAL segment".
        context: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// Bytes free for unprivileged use on its filesystem (statvfs), when known.
        free_bytes: Option<u64>,
    },

    /// A stable-store write (term, vote, membership, ...) failed because the filesystem
    /// holding the store is full. Unlike [`Error::NoSpace`] it cannot be retried: sled
    /// gives no account of what it wrote (and keeps failing once one write failed), and a
    /// failed fsync is never retried as a success, so the store stops and the node with it.
    #[error(
        "no space left on the device: the stable store {} could not save a write: {source}; \
         the filesystem holding it has {}; the write was not saved and nothing that depends \
         on it was sent. Free space on that filesystem (or grow it), then restart the node",
        path.display(),
        crate::space::describe_free_bytes(*free_bytes)
    )]
    StableNoSpace {
        /// The sled directory.
        path: PathBuf,
        /// Bytes free for unprivileged use on its filesystem (statvfs), when known.
        free_bytes: Option<u64>,
        /// The failure as the store saw it (sled's, or the fsync's).
        #[source]
        source: Box<Error>,
    },

    /// The stable store belongs to another cluster or another node.
    #[error(
        "stable store {}: this data directory belongs to {what} {stored}, not {what} {expected}; \
         point the node at its own data directory (or remove this one to join as a new member)",
        path.display()
    )]
    IdentityMismatch {
        /// The sled directory.
        path: PathBuf,
        /// "cluster" or "node".
        what: &'static str,
        /// The identity recorded in the store.
        stored: String,
        /// The identity this process was started with.
        expected: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`] from a context, a path and an `io::Error`.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// Like [`Error::io`], but an out-of-space failure (ENOSPC, EDQUOT) becomes
    /// [`Error::NoSpace`]. Only for calls after whose failure the store can go on (see
    /// `crate::space`, and `Error::into_fatal` for a caller that cannot); anywhere else
    /// ENOSPC stays a plain I/O error.
    pub fn io_or_no_space(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        let path = path.into();
        if crate::space::is_out_of_space(&source) {
            let free_bytes = crate::space::free_bytes(&path).ok();
            return Error::NoSpace {
                context,
                path,
                free_bytes,
            };
        }
        Error::Io {
            context,
            path,
            source,
        }
    }

    /// Whether this is [`Error::NoSpace`]: the write may be retried once space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }

    /// This error as one that stops the store: [`Error::NoSpace`] becomes the plain
    /// [`Error::Io`] (ENOSPC) it came from. For a full disk that hit an operation past
    /// its point of no return, which cannot be retried (see `crate::space`), so the error
    /// must not promise that writes resume on their own.
    pub(crate) fn into_fatal(self) -> Error {
        match self {
            Error::NoSpace { context, path, .. } => Error::Io {
                context,
                path,
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            },
            other => other,
        }
    }
}
