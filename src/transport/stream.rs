//! The byte stream under a peer connection: plain TCP, or TLS over TCP when the cluster
//! file has `tls` (issue 16). Framing and the handshake do not care which.

use tokio::io::{AsyncRead, AsyncWrite};

/// What a peer connection reads and writes.
pub(super) trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// A peer connection's stream. One dynamic call per read or write buffer (not per
/// message: frames are batched), which costs nothing next to the syscall.
pub(super) type PeerStream = Box<dyn PeerIo>;
