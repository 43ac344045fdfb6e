//! The client API's accept loop, in place of `axum::serve`, which bounds neither the
//! number of connections nor how long one may sit silent.
//!
//! Why it matters: each client connection is a file descriptor, and a node needs
//! descriptors for its peers (accepting a reconnecting peer) and for its disk (the stable
//! store fsyncs its directory when the term changes). With a soft `RLIMIT_NOFILE` of 1024
//! (the systemd default) and 1,100 idle connections, an unbounded loop took every
//! descriptor: writes through the node failed and the next election stopped it with EMFILE
//! (`tests/bounded_connections.rs`). Three bounds close that:
//!
//! - **A cap on connections** (`max_client_connections`). At the cap the loop stops
//!   calling `accept`: new connections wait, complete, in the kernel's listen backlog and
//!   are served as soon as a slot frees, rather than being accepted and closed. A client
//!   therefore sees a slow connect, not a reset, and the node holds no descriptor for it.
//!   The slot is taken before `accept`, so the number of open client sockets never
//!   exceeds the cap.
//! - **A header-read timeout** (`client_header_read_timeout_ms`, hyper's
//!   `header_read_timeout`): a connection that does not send a whole request head in
//!   time is closed, so silent sockets free their slots. hyper starts this timer whenever
//!   the connection is ready for a request head, after an answer too, so it also closes
//!   a keep-alive connection that waits longer than that for its next request
//!   (`a_keep_alive_connection_is_closed_when_its_next_request_head_is_late`).
//! - **An idle timeout** (`client_idle_timeout_ms`): a connection with no bytes read or
//!   written for that long is asked to close (gracefully: an answer in progress
//!   finishes). It matters when it is set below the header-read timeout, and for a
//!   connection whose request is being answered slowly.
//!
//! An `accept` failure (EMFILE, ENFILE, ENOBUFS) is logged once per burst and retried with
//! a short, growing pause instead of spinning.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use futures_util::future::Either;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};

/// Bounds of the accept loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most client connections open at once.
    pub connections_max: u32,
    /// Longest wait for a request head.
    pub header_read_timeout: Duration,
    /// Longest silence on a keep-alive connection.
    pub idle_timeout: Duration,
}

/// File descriptors left to everything but client connections when the cap is derived
/// from the limit: peers (an inbound and an outbound socket each), the WAL's segments,
/// sled's files, snapshot files being written or sent, the forwarding client's
/// connections to the leader (at most `forward::CONNECTIONS_MAX`), listeners, epoll and
/// stdio. A three- to seven-node cluster uses well under a hundred of them.
pub const RESERVED_FDS: u64 = 256;

/// The cap when none is configured, however high the descriptor limit: beyond it, memory
/// (each connection keeps read and write buffers) rather than descriptors is the bound.
pub const DERIVED_CONNECTIONS_MAX: u64 = 4096;

/// Length of the listen backlog: where connections wait while the node is at its cap.
/// tokio's `TcpListener::bind` leaves it at 128, so with 1,100 idle clients and a cap of
/// 768 the 897th connect timed out; the kernel caps it at `net.core.somaxconn` (4096 by
/// default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds the client API's listener with a [`LISTEN_BACKLOG`]-long backlog. SO_REUSEADDR,
/// as tokio's own bind sets, lets a restarted node listen while old connections linger
/// in TIME_WAIT.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The default `max_client_connections` for a process allowed `fd_limit` descriptors:
/// what is left after [`RESERVED_FDS`], at most [`DERIVED_CONNECTIONS_MAX`], and at least
/// 16 (a limit that low is misconfigured, but the node should still answer a few clients).
pub fn default_connections_max(fd_limit: u64) -> u32 {
    let derived = fd_limit
        .saturating_sub(RESERVED_FDS)
        .clamp(16, DERIVED_CONNECTIONS_MAX);
    u32::try_from(derived).unwrap_or(u32::MAX)
}

/// Serves `routes` on `listener` within `limits` until `stop` resolves; then stops
/// accepting, asks every open connection to close once its answer in progress is sent,
/// and returns when all have closed (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    routes: impl Into<Routes>,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, routes, limits, stop, None).await
}

/// What answers a connection's requests: the router, and optionally a shortcut that answers
/// some requests itself before the router sees them (issue 14: the key-value reads and
/// writes, `every_request::kv_shortcut`).
#[derive(Clone)]
pub struct Routes {
    router: Router,
    shortcut: Option<Arc<Shortcut>>,
}

/// Requests answered without the router.
pub struct Shortcut {
    /// Whether the shortcut answers `request`.
    pub takes: fn(&Request) -> bool,
    /// Answers a request it takes.
    pub answer: Box<ShortcutAnswer>,
}

/// How a [`Shortcut`] answers.
pub type ShortcutAnswer =
    dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync;

impl Routes {
    /// `router`, with `shortcut` asked first.
    pub fn with_shortcut(router: Router, shortcut: Arc<Shortcut>) -> Routes {
        Routes {
            router,
            shortcut: Some(shortcut),
        }
    }
}

impl From<Router> for Routes {
    fn from(router: Router) -> Routes {
        Routes {
            router,
            shortcut: None,
        }
    }
}

/// HTTPS for the client API (issue 16): the node's TLS material (re-read on SIGHUP, so each
/// connection takes the configuration of the moment) and how a verified certificate
/// becomes an identity.
#[derive(Clone)]
pub struct HttpsOptions {
    /// The node's certificates.
    pub tls: Arc<crate::security::tls::NodeTls>,
    /// The identity a verified client certificate proves, if any.
    pub identify: Arc<Identify>,
}

/// Maps a verified client certificate to the identity it proves.
pub type Identify = dyn Fn(&rustls::pki_types::CertificateDer<'_>) -> Option<super::auth::TlsIdentity>
    + Send
    + Sync;

/// [`serve`], over HTTPS when `https` is given.
pub async fn serve_with(
    listener: TcpListener,
    routes: impl Into<Routes>,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
    https: Option<HttpsOptions>,
) -> io::Result<()> {
    let routes = routes.into();
    let local_addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(limits.connections_max as usize));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut stop = pin!(stop);
    let mut accept_failures = AcceptFailures::default();
    let mut cap_log = CapLog::default();
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                cap_log.reached(local_addr, limits.connections_max);
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // Never closed; but if it were, no connection could be served.
                        Err(_) => break,
                    },
                    () = &mut stop => break,
                }
            }
        };
        let (stream, _remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    let pause = accept_failures.failed(&e, local_addr);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut stop => break,
                    }
                }
            },
            () = &mut stop => break,
        };
        accept_failures.succeeded(local_addr);
        let routes = routes.clone();
        let closing = closing_rx.clone();
        let https = https.clone();
        tokio::spawn(async move {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("set_nodelay on a client connection failed: {e}");
            }
            let activity = Arc::new(Activity::new());
            let tracked = TrackedStream {
                inner: stream,
                activity: Arc::clone(&activity),
            };
            match https {
                None => serve_connection(tracked, activity, None, routes, limits, closing).await,
                Some(https) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(https.tls.api_server_config());
                    // The handshake is bounded like a request head: a silent socket frees
                    // its slot in time.
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tracked))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let identity = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|leaf| (https.identify)(leaf));
                            serve_connection(tls, activity, identity, routes, limits, closing).await
                        }
                        // A plain-HTTP client, a certificate of another CA, a scanner:
                        // routine, and the client sees the handshake fail.
                        Ok(Err(e)) => tracing::debug!("client TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("client TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    // Graceful stop: no new connections; open ones finish what they are answering.
    drop(listener);
    let _ = closing_tx.send(true);
    // Every connection task holds one slot until it ends.
    let _all_closed = slots.acquire_many(limits.connections_max).await;
    Ok(())
}

/// Serves one connection until the client closes it, a timeout closes it, or the server
/// stops.
async fn serve_connection<S>(
    stream: S,
    activity: Arc<Activity>,
    identity: Option<super::auth::TlsIdentity>,
    routes: Routes,
    limits: ConnectionLimits,
    closing: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let Routes { router, shortcut } = routes;
    let inner = TowerToHyperService::new(router);
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            // What the connection's certificate proved rides on each request, for
            // `auth::admit`.
            if let Some(identity) = identity {
                request.extensions_mut().insert(identity);
            }
            let request = request.map(Body::new);
            match &shortcut {
                Some(shortcut) if (shortcut.takes)(&request) => {
                    let answer = (shortcut.answer)(request);
                    Either::Left(async move { Ok::<_, Infallible>(answer.await) })
                }
                _ => Either::Right(hyper::service::Service::call(&inner, request)),
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut connection = pin!(builder.serve_connection(io, service));
    // The server's stop and the idle timeout are watched by a task of their own, which
    // tells this one through a oneshot: a `select!` polls every branch each time any of
    // them wakes, and this task wakes several times per request, where polling the watch
    // and the idle timer cost ~0.5 k instructions a time and a oneshot ~40 (callgrind).
    let (close_now, mut told_to_close) = oneshot::channel::<()>();
    tokio::spawn(watch_for_close(
        close_now,
        activity,
        limits.idle_timeout,
        closing,
    ));
    let mut closing_asked = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    // A client that went away, or a header-read timeout: routine.
                    tracing::debug!("client connection ended: {e}");
                }
                return;
            }
            _ = &mut told_to_close, if !closing_asked => {
                // The server stops or the connection is idle: it closes at once, but an
                // answer still being sent finishes first.
                connection.as_mut().graceful_shutdown();
                closing_asked = true;
            }
        }
    }
}

/// Tells a connection to close when the server stops or the connection has been silent
/// for `idle`; ends when the connection does (its receiver dropped).
async fn watch_for_close(
    mut close_now: oneshot::Sender<()>,
    activity: Arc<Activity>,
    idle: Duration,
    mut closing: watch::Receiver<bool>,
) {
    tokio::select! {
        () = close_now.closed() => return,
        _ = closing.changed() => {}
        () = activity.silent_for(idle) => {}
    }
    let _ = close_now.send(());
}

/// Warns when the connection cap is reached, at most once a minute: under a flood every
/// closed connection lets one more in, and the cap is reached again at once (a first
/// version warned 312 times in 20 s).
#[derive(Default)]
struct CapLog {
    last_warned: Option<Instant>,
    /// Times the cap was reached since the last warning.
    reached: u64,
}

impl CapLog {
    const QUIET: Duration = Duration::from_secs(60);

    fn reached(&mut self, local_addr: std::net::SocketAddr, connections_max: u32) -> bool {
        self.reached += 1;
        if self
            .last_warned
            .is_some_and(|at| at.elapsed() < Self::QUIET)
        {
            return false;
        }
        tracing::warn!(
            %local_addr,
            connections_max,
            times = self.reached,
            "client connection cap reached: new connections wait in the listen backlog \
             until one closes (raise max_client_connections if this is normal load; \
             repeats are reported once a minute)"
        );
        self.last_warned = Some(Instant::now());
        self.reached = 0;
        true
    }
}

/// Logs accept failures once per burst and says how long to pause before the next try.
#[derive(Default)]
struct AcceptFailures {
    /// Failures since the last successful accept.
    count: u64,
    since: Option<Instant>,
}

impl AcceptFailures {
    const PAUSE_MIN: Duration = Duration::from_millis(10);
    const PAUSE_MAX: Duration = Duration::from_millis(500);

    fn failed(&mut self, e: &io::Error, local_addr: std::net::SocketAddr) -> Duration {
        if self.count == 0 {
            self.since = Some(Instant::now());
            tracing::warn!(
                %local_addr,
                "accepting a client connection failed: {e}; retrying with pauses of up to \
                 {:?} (if this is 'Too many open files', raise the node's RLIMIT_NOFILE or \
                 lower max_client_connections)",
                Self::PAUSE_MAX
            );
        }
        self.count += 1;
        // 10 ms, 20 ms, 40 ms ... 500 ms: quick to recover, never a busy loop.
        let doublings = (self.count - 1).min(10) as u32;
        (Self::PAUSE_MIN * 2u32.pow(doublings)).min(Self::PAUSE_MAX)
    }

    fn succeeded(&mut self, local_addr: std::net::SocketAddr) {
        if self.count > 0 {
            let elapsed_ms = self.since.map_or(0, |at| at.elapsed().as_millis() as u64);
            tracing::info!(
                %local_addr,
                failures = self.count,
                elapsed_ms,
                "accepting client connections again"
            );
            *self = AcceptFailures::default();
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle`.
    async fn silent_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.opened + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A `TcpStream` that records when bytes move, for the idle timeout.
struct TrackedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_cap_leaves_descriptors_for_peers_and_storage() {
        assert_eq!(default_connections_max(1024), 1024 - RESERVED_FDS as u32);
        assert_eq!(
            default_connections_max(1 << 20),
            DERIVED_CONNECTIONS_MAX as u32
        );
        assert_eq!(default_connections_max(100), 16);
        assert_eq!(default_connections_max(0), 16);
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Server = tokio::task::JoinHandle<io::Result<()>>;

    /// Serves a one-route router within `limits`; returns its address, the stop switch and
    /// the serving task.
    async fn start(
        limits: ConnectionLimits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        Server,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, limits, async move {
            let _ = stop_rx.await;
        }));
        (addr, stop_tx, server)
    }

    /// Limits with the two timeouts given in milliseconds and room for 8 connections.
    fn limits(header_read_timeout_ms: u64, idle_timeout_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            connections_max: 8,
            header_read_timeout: Duration::from_millis(header_read_timeout_ms),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
        }
    }

    /// Sends `sent` on a new connection (and reads the answer when it is a whole request),
    /// then asserts the server closes the connection within 5 s, and not before 200 ms
    /// (the timeouts under test are 300 ms); `what` says what stayed open.
    async fn assert_closed_by_timeout(limits: ConnectionLimits, sent: &[u8], what: &str) {
        let (addr, _stop, _server) = start(limits).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        if sent == GET {
            assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
        }
        let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
        let closed = closed.unwrap_or_else(|| panic!("{what} stayed open for 5 s"));
        assert!(
            closed >= Duration::from_millis(200),
            "closed after only {closed:?}"
        );
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";

    /// Reads until the answer to one `GET /` has arrived.
    async fn read_answer(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"ok") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before the answer: {:?}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// How long until the server closes `stream` (EOF or reset), up to `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
            Ok(Ok(n)) => panic!("unexpected {n} bytes from the server"),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        assert_closed_by_timeout(limits(30_000, 300), GET, "an idle keep-alive connection").await;
    }

    #[tokio::test]
    async fn a_keep_alive_connection_is_closed_when_its_next_request_head_is_late() {
        let what = "a keep-alive connection waiting for its next request";
        assert_closed_by_timeout(limits(300, 30_000), GET, what).await;
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
        // Half a request head, then nothing.
        let what = "a connection that never finished its headers";
        assert_closed_by_timeout(limits(300, 30_000), b"GET / HTTP/1.1\r\n", what).await;
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_until_a_slot_frees() {
        let (addr, _stop, _server) = start(ConnectionLimits {
            connections_max: 2,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        first.write_all(GET).await.unwrap();
        read_answer(&mut first).await;
        second.write_all(GET).await.unwrap();
        read_answer(&mut second).await;
        // The third completes in the kernel's backlog but is not served...
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(GET).await.unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
        assert!(
            early.is_err(),
            "a third connection was served with a cap of 2: {early:?}"
        );
        // ...until one of the two closes.
        drop(first);
        let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut third)).await;
        assert!(answer
            .expect("not served after a slot freed")
            .starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_graceful_stop_finishes_and_closes_open_connections() {
        let (addr, stop_tx, server) = start(limits(30_000, 30_000)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(GET).await.unwrap();
        read_answer(&mut stream).await;
        stop_tx.send(()).unwrap();
        let done = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(
            matches!(done, Ok(Ok(Ok(())))),
            "serve did not return: {done:?}"
        );
        assert!(closed_within(&mut stream, Duration::from_secs(1))
            .await
            .is_some());
    }

    #[test]
    fn reaching_the_cap_warns_once_a_minute() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let mut log = CapLog::default();
        assert!(log.reached(addr, 8));
        assert!((0..100).all(|_| !log.reached(addr, 8)));
        assert_eq!(log.reached, 100);
        log.last_warned = Instant::now().checked_sub(CapLog::QUIET);
        if log.last_warned.is_some() {
            assert!(log.reached(addr, 8));
            assert_eq!(log.reached, 0);
        }
    }

    #[test]
    fn accept_failures_pause_longer_each_time_and_reset_on_success() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let mut failures = AcceptFailures::default();
        let pauses: Vec<Duration> = (0..8).map(|_| failures.failed(&e, addr)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), AcceptFailures::PAUSE_MAX);
        failures.succeeded(addr);
        assert_eq!(failures.failed(&e, addr), Duration::from_millis(10));
    }
}
