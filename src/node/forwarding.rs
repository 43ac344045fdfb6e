//! Issue 14: a follower's client writes travel to the leader over the peer link.
//!
//! Before, a follower replayed each client write as a second HTTP request to the leader
//! (a reqwest client here, a second HTTP parse there, the answer relayed back): the
//! largest avoidable cost measured at 64 clients spread over the nodes. Now the follower
//! sends the already-encoded command in a [`Forward`] frame on the connection it keeps to
//! the leader anyway, and the leader proposes it through the same queue as its own
//! clients' writes (so it is batched into the same proposals) and answers with a
//! [`ForwardReply`] on its connection to the follower.
//!
//! The follower's side is a table of forwards in flight, one oneshot each, keyed by a
//! request id it picks. It is capped ([`FORWARDS_IN_FLIGHT_MAX`]): past the cap a write is
//! refused at once, nothing sent. A waiting forward is answered truthfully when the
//! answer cannot come: once it went out, a lost connection, a leader change or a timeout
//! all mean "unknown outcome" (it may have reached the leader and commit), never
//! "failed". Nothing is ever sent twice, so a forward cannot be applied twice; and the
//! command carries the client's `Request-Id` session, which the leader's state machine
//! deduplicates exactly as for a write sent to it directly.
//!
//! Reads take the same link (Raft thesis §6.4, "followers can serve read-only queries";
//! etcd's `MsgReadIndex`): a follower asks the leader for a read index with a
//! [`ReadIndexRequest`] (protocol version 3), the leader runs its ordinary ReadIndex or
//! lease barrier (the core confirms every read waiting in one heartbeat round at once) and
//! answers the index, and the follower serves the read from its own state machine once it
//! has applied that index. The leader does no work per key and no HTTP at all.
//!
//! Why that is linearizable (§6.4): the leader answers with its commit index after
//! confirming, once the request reached it, that it still led (a quorum round, or a lease
//! that no other leader can exist under). Every write acknowledged before the client sent
//! its read was committed before the request reached the leader, and a confirmed leader's
//! commit index covers everything committed in the cluster, so the index is at least that
//! write's. A state machine that has applied the index therefore reflects every such write,
//! and possibly later ones, which is allowed: the read takes effect at some instant between
//! its start and its answer. A lease read is the same argument with the lease standing in
//! for the quorum round (it covers the instant the leader chose the index). A follower that
//! cannot reach the leader, or that does not apply far enough in time, answers an error,
//! never its own possibly stale state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{Node, RequestError, COMMAND_BYTES_MAX};
use crate::raft::NodeId;
use crate::raft::ReadMode;
use crate::security::Role;
use crate::state_machine::StateMachine;
use crate::transport::codec::{
    bounded_message, ReadConsistency, ReadIndexOutcome, ReadIndexReply, ReadIndexRequest,
    PROTOCOL_VERSION_FORWARD, PROTOCOL_VERSION_READ_INDEX,
};
use crate::transport::{Forward, ForwardOutcome, ForwardReply, PeerFrame, SendError, Transport};

/// Most forwards one follower keeps in flight. Far above what keeps a leader busy (its
/// proposals batch whatever is queued), low enough that a flood of clients on a follower
/// costs bounded memory here and on the leader.
pub const FORWARDS_IN_FLIGHT_MAX: usize = 4096;

/// How long a forward is still awaited after this node learned of another leader. The old
/// leader, if alive, answers the writes it proposed once the new leader commits (or
/// overwrites) them, which takes one of the new leader's AppendEntries: milliseconds. One
/// that is frozen never answers; waiting longer only delays the client's retry.
const LEADER_CHANGE_WAIT: Duration = Duration::from_secs(1);

/// How much longer than the leader's own wait the follower waits for its answer: the hop
/// and back, as for a forward over HTTP.
const HOP_SLACK: Duration = Duration::from_secs(1);

/// Longest a leader waits for a forwarded write, whatever the follower asks.
const LEADER_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// Why a forward over the peer link gave no outcome from the leader.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardFailure {
    /// The link to the leader is down or speaks protocol version 1. Nothing was sent:
    /// forward over HTTP instead.
    #[error("the peer link to leader {leader} cannot carry forwards; nothing was sent")]
    Unsupported {
        /// The leader.
        leader: NodeId,
    },
    /// [`FORWARDS_IN_FLIGHT_MAX`] forwards are in flight, or the link's queue is full.
    /// Nothing was sent.
    #[error(
        "node {node} has {in_flight} writes in flight to leader {leader} over the peer link, \
         as many as it takes; nothing was proposed; retry with backoff or send to the leader"
    )]
    Overloaded {
        /// This node.
        node: NodeId,
        /// The leader.
        leader: NodeId,
        /// Forwards in flight when this one was refused.
        in_flight: usize,
    },
    /// The forward was sent but its answer cannot come: the write may or may not take
    /// effect.
    #[error(
        "the write was forwarded to leader {leader} but {cause}; it may or may not take \
         effect (retry with the same Request-Id to find out)"
    )]
    Unknown {
        /// The leader.
        leader: NodeId,
        /// What cut the wait short.
        cause: LostCause,
    },
}

/// What ended the wait for a forward's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LostCause {
    /// A connection to or from the leader closed.
    #[error("the peer connection to it closed before it answered")]
    LinkLost,
    /// Another leader took over and the old one did not answer within a second.
    #[error("leadership moved away from it before it answered")]
    LeaderChanged,
    /// No answer within the request timeout.
    #[error("no answer came within the request timeout")]
    Timeout,
    /// This node is stopping.
    #[error("this node is stopping")]
    Stopped,
}

/// Why a follower could not get a read index from the leader over the peer link, or could
/// not reach it. A read writes nothing, so every one of them is safe to retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadIndexFailure {
    /// The link to the leader is down or speaks a protocol version older than 3. Nothing
    /// was sent: forward the read over HTTP instead.
    #[error("the peer link to leader {leader} cannot carry read index requests; nothing was sent")]
    Unsupported {
        /// The leader.
        leader: NodeId,
    },
    /// As many read index requests are in flight as this node keeps, or the link's queue
    /// is full. Nothing was sent.
    #[error(
        "node {node} has {in_flight} reads waiting for a read index from leader {leader}, \
         as many as it takes; retry with backoff or read from the leader"
    )]
    Overloaded {
        /// This node.
        node: NodeId,
        /// The leader.
        leader: NodeId,
        /// Requests in flight when this one was refused.
        in_flight: usize,
    },
    /// The node asked does not lead.
    #[error(
        "node {node} asked node {leader} for a read index, but it no longer leads (it knows of \
         {}); leadership is changing, retry shortly",
        .hint.map_or("no leader".to_string(), |l| format!("leader {l}"))
    )]
    NotLeader {
        /// This node.
        node: NodeId,
        /// The node asked.
        leader: NodeId,
        /// The leader it knows of.
        hint: Option<NodeId>,
    },
    /// The leader could not confirm its leadership in time.
    #[error(
        "leader {leader} could not confirm its leadership in time for a read through node \
         {node}; retry"
    )]
    LeaderTimeout {
        /// This node.
        node: NodeId,
        /// The leader.
        leader: NodeId,
    },
    /// The request went out but no answer can come.
    #[error("node {node} asked leader {leader} for a read index but {cause}; retry")]
    Lost {
        /// This node.
        node: NodeId,
        /// The leader.
        leader: NodeId,
        /// What cut the wait short.
        cause: LostCause,
    },
    /// The leader answered, but this node did not apply that far within the timeout.
    #[error(
        "node {node} must apply index {index} to serve this read but has applied only \
         {applied} within the request timeout (it is catching up); retry, or read from the \
         leader"
    )]
    Behind {
        /// This node.
        node: NodeId,
        /// The index the leader gave.
        index: u64,
        /// What this node had applied when it gave up.
        applied: u64,
    },
}

impl ReadIndexFailure {
    /// Whether the client waited out its timeout (`504`) rather than being refused (`503`).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ReadIndexFailure::LeaderTimeout { .. }
                | ReadIndexFailure::Behind { .. }
                | ReadIndexFailure::Lost {
                    cause: LostCause::Timeout,
                    ..
                }
        )
    }
}

/// A read waiting for the outcome of the next read index request.
type ReadJoiner = oneshot::Sender<Result<u64, ReadIndexFailure>>;

/// Requests sent to a leader over the peer link and waiting for its answer (forwards, or
/// read index requests), keyed by the id they went out with; at most `cap` at once.
struct InFlight<T> {
    cap: usize,
    waiting: Mutex<HashMap<u64, (NodeId, oneshot::Sender<T>)>>,
}

impl<T> InFlight<T> {
    fn new(cap: usize) -> Self {
        InFlight {
            cap,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (NodeId, oneshot::Sender<T>)>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn len(&self) -> usize {
        self.table().len()
    }

    /// Takes a slot for request `id` to `leader`, or says how many are in flight.
    fn reserve(&self, id: u64, leader: NodeId) -> Result<Slot<'_, T>, usize> {
        let mut table = self.table();
        if table.len() >= self.cap {
            return Err(table.len());
        }
        let (reply, answer) = oneshot::channel();
        table.insert(id, (leader, reply));
        Ok(Slot {
            table: self,
            id,
            answer,
        })
    }

    /// Delivers `outcome` from `from` to request `id`; ignored for a request not waiting
    /// (answered already, given up on) or asked of another node.
    fn resolve(&self, from: NodeId, id: u64, outcome: T) {
        let mut table = self.table();
        if table.get(&id).is_some_and(|(leader, _)| *leader == from) {
            if let Some((_, reply)) = table.remove(&id) {
                let _ = reply.send(outcome);
            }
        }
    }

    fn forget(&self, id: u64) {
        self.table().remove(&id);
    }
}

/// A request's place in an [`InFlight`] table and the receiver of its answer. Dropping it
/// removes the entry however the wait ends, including when the client goes away and the
/// handler's future is dropped.
struct Slot<'a, T> {
    table: &'a InFlight<T>,
    id: u64,
    answer: oneshot::Receiver<T>,
}

impl<T> Drop for Slot<'_, T> {
    fn drop(&mut self) {
        self.table.forget(self.id);
    }
}

/// Resolves once the peer link to `leader` is lost after this call (never once the
/// transport stopped). Call it before sending: a loss after that may have cost the frame
/// or its reply.
fn link_lost(transport: &Transport, leader: NodeId) -> impl std::future::Future<Output = ()> + '_ {
    let mut losses = transport.link_loss_events();
    let losses_before = transport.link_losses(leader);
    async move {
        loop {
            if transport.link_losses(leader) != losses_before {
                return;
            }
            if losses.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// The follower's table of forwards in flight, and the counters `/metrics` shows.
pub struct Forwarder {
    next_id: AtomicU64,
    /// Forwards in flight; at most [`FORWARDS_IN_FLIGHT_MAX`] but in tests.
    waiting: InFlight<ForwardOutcome>,
    /// Read index requests in flight; the same cap.
    reads: InFlight<ReadIndexOutcome>,
    /// Per leader and consistency, the queue of reads waiting to join the next read index
    /// request ([`Node::drive_read_batches`]).
    batches: Mutex<HashMap<(NodeId, ReadConsistency), mpsc::Sender<ReadJoiner>>>,
    /// Read index requests this node sent to a leader over the peer link (each for every
    /// read that waited for it).
    pub read_index_sent: AtomicU64,
    /// Read index requests this node answered as the leader.
    pub read_index_served: AtomicU64,
    /// Reads this node served from its own state machine at a leader's read index.
    pub follower_reads: AtomicU64,
    /// Forwards refused at the cap (nothing sent).
    pub dropped_overload: AtomicU64,
    /// Forwards sent whose answer was lost (link loss, leader change, timeout).
    pub dropped_lost: AtomicU64,
    /// Forwards this node served as the leader.
    pub served: AtomicU64,
    /// Forwards this node is serving as the leader whose answer is not queued yet: a
    /// stopping node waits for them ([`Node::forwards_quiesced`]).
    answering: AtomicUsize,
    /// Notified when `answering` falls to zero.
    all_answered: Notify,
    /// A leader that refused a forward because it is stopping, and how many connections
    /// this node had made to it then: forwards to it are refused here without sending
    /// until this node connects to it again (it restarted), so that none is in flight when
    /// it exits. Not until a link loss: the loss of its connection to this node may be
    /// seen before that of this node's connection to it, and a forward sent in between
    /// would be lost.
    stopping_leader: Mutex<Option<(NodeId, u64)>>,
}

/// A forward the leader is serving; counted in [`Forwarder::answering`] until dropped.
struct Answering<'a>(&'a Forwarder);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if self.0.answering.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.all_answered.notify_waiters();
        }
    }
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder::new(FORWARDS_IN_FLIGHT_MAX)
    }
}

impl Forwarder {
    /// A table that holds at most `cap` forwards in flight.
    pub fn new(cap: usize) -> Forwarder {
        Forwarder {
            next_id: AtomicU64::new(0),
            waiting: InFlight::new(cap),
            reads: InFlight::new(cap),
            batches: Mutex::new(HashMap::new()),
            read_index_sent: AtomicU64::new(0),
            read_index_served: AtomicU64::new(0),
            follower_reads: AtomicU64::new(0),
            dropped_overload: AtomicU64::new(0),
            dropped_lost: AtomicU64::new(0),
            served: AtomicU64::new(0),
            answering: AtomicUsize::new(0),
            all_answered: Notify::new(),
            stopping_leader: Mutex::new(None),
        }
    }

    /// Reads the test-only switch `RAFTLOG_TEST_FORWARDS_IN_FLIGHT_MAX=<n>`, which lowers
    /// the cap so that process tests can reach it; [`FORWARDS_IN_FLIGHT_MAX`] otherwise.
    /// Never set it in production.
    pub fn from_env() -> Forwarder {
        let cap = match std::env::var("RAFTLOG_TEST_FORWARDS_IN_FLIGHT_MAX") {
            Err(_) => FORWARDS_IN_FLIGHT_MAX,
            Ok(value) => match value.parse::<usize>() {
                Ok(cap) => {
                    tracing::warn!(
                        cap,
                        "test-only switch RAFTLOG_TEST_FORWARDS_IN_FLIGHT_MAX is set"
                    );
                    cap.min(FORWARDS_IN_FLIGHT_MAX)
                }
                Err(e) => {
                    tracing::warn!("ignoring RAFTLOG_TEST_FORWARDS_IN_FLIGHT_MAX={value:?}: {e}");
                    FORWARDS_IN_FLIGHT_MAX
                }
            },
        };
        Forwarder::new(cap)
    }

    /// Forwards waiting for an answer right now.
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// Counts a forward this node serves as the leader until the guard drops.
    fn begin_answering(&self) -> Answering<'_> {
        self.answering.fetch_add(1, Ordering::SeqCst);
        Answering(self)
    }

    /// Resolves once no forward is being served (at once if none is).
    async fn all_answered(&self) {
        loop {
            let notified = self.all_answered.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop to zero after it still wakes us.
            notified.as_mut().enable();
            if self.answering.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Whether `leader` said it is stopping, and this node has not connected to it again
    /// since (`connects` is this node's count of connections made to it now).
    fn leader_is_stopping(&self, leader: NodeId, connects: u64) -> bool {
        *self
            .stopping_leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            == Some((leader, connects))
    }

    fn mark_leader_stopping(&self, leader: NodeId, connects: u64) {
        *self
            .stopping_leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((leader, connects));
    }

    /// Takes a slot for a forward to `leader`, or says how many are in flight.
    fn reserve(&self, leader: NodeId) -> Result<Slot<'_, ForwardOutcome>, usize> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.waiting.reserve(id, leader).inspect_err(|_| {
            self.dropped_overload.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Delivers a reply from `from`. A reply for an id not waiting (answered already,
    /// given up on) or from another node than the one asked is ignored.
    pub(super) fn resolve(&self, from: NodeId, reply: ForwardReply) {
        self.waiting.resolve(from, reply.request_id, reply.outcome);
    }

    /// Read index requests waiting for an answer right now.
    pub fn reads_in_flight(&self) -> usize {
        self.reads.len()
    }

    /// Takes a slot for a read index request to `leader`, or says how many are in flight.
    fn reserve_read(&self, leader: NodeId) -> Result<Slot<'_, ReadIndexOutcome>, usize> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.reads.reserve(id, leader)
    }

    /// Delivers a read index reply from `from`; one for a request not waiting, or from
    /// another node than the one asked, is ignored.
    pub(super) fn resolve_read(&self, from: NodeId, reply: ReadIndexReply) {
        self.reads.resolve(from, reply.request_id, reply.outcome);
    }
}

impl<S: StateMachine> Node<S> {
    /// Sends `command` (an encoded `kv::Command`) to `leader` over the peer link and waits
    /// for its outcome: the leader waits at most `timeout` for the write to apply, this node
    /// a second more for the answer. `role` is the client's, for the leader to check.
    ///
    /// Once `leader` has answered [`ForwardOutcome::Stopped`], later writes get that answer
    /// here without being sent, until this node connects to it anew: a stopping leader
    /// waits for the forwards it receives to stop ([`Node::forwards_quiesced`]) before it
    /// exits, and one sent as it exits would have no known outcome (a `504`).
    pub async fn forward_write(
        &self,
        leader: NodeId,
        command: Bytes,
        role: Role,
        timeout: Duration,
    ) -> Result<ForwardOutcome, ForwardFailure> {
        let transport = &self.transport;
        if leader == self.id
            || transport
                .peer_protocol(leader)
                .is_none_or(|version| version < PROTOCOL_VERSION_FORWARD)
        {
            return Err(ForwardFailure::Unsupported { leader });
        }
        let connects = transport.peer_connects(leader);
        if self.forwarder.leader_is_stopping(leader, connects) {
            return Ok(ForwardOutcome::Stopped);
        }
        let overloaded = |in_flight| ForwardFailure::Overloaded {
            node: self.id,
            leader,
            in_flight,
        };
        let mut slot = self.forwarder.reserve(leader).map_err(overloaded)?;
        let link_lost = link_lost(transport, leader);
        let frame = PeerFrame::Forward(Forward {
            request_id: slot.id,
            role,
            command,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
        match transport.send_forward(leader, frame) {
            Ok(()) => {}
            Err(SendError::QueueFull { .. }) => {
                self.forwarder
                    .dropped_overload
                    .fetch_add(1, Ordering::Relaxed);
                return Err(overloaded(self.forwarder.in_flight()));
            }
            Err(SendError::UnknownPeer { .. } | SendError::NotFromThisNode { .. }) => {
                return Err(ForwardFailure::Unsupported { leader })
            }
            Err(SendError::Shutdown) => {
                return Err(ForwardFailure::Unknown {
                    leader,
                    cause: LostCause::Stopped,
                })
            }
        }
        let leader_changed = async {
            self.leader_changed_from(leader).await;
            tokio::time::sleep(LEADER_CHANGE_WAIT).await;
        };
        // Biased: an answer that arrived wins over giving up on it.
        let cause = tokio::select! {
            biased;
            outcome = &mut slot.answer => match outcome {
                Ok(ForwardOutcome::Stopped) => {
                    self.forwarder.mark_leader_stopping(leader, connects);
                    return Ok(ForwardOutcome::Stopped);
                }
                Ok(outcome) => return Ok(outcome),
                Err(_) => LostCause::Stopped,
            },
            () = link_lost => LostCause::LinkLost,
            () = leader_changed => LostCause::LeaderChanged,
            () = tokio::time::sleep(timeout + HOP_SLACK) => LostCause::Timeout,
        };
        self.forwarder.dropped_lost.fetch_add(1, Ordering::Relaxed);
        Err(ForwardFailure::Unknown { leader, cause })
    }

    /// A follower's read barrier (issue 14, thesis §6.4): asks `leader` for a read index
    /// over the peer link and waits until this node has applied it, all within `timeout`.
    /// Returns the index reached; the caller then reads its own state machine, which has
    /// applied at least that much (see the module's comment for why that is
    /// linearizable). [`ReadIndexFailure::Unsupported`] when the link cannot carry the
    /// request: nothing was sent, forward the read over HTTP.
    pub async fn read_index_from_leader(
        &self,
        leader: NodeId,
        mode: ReadMode,
        timeout: Duration,
    ) -> Result<u64, ReadIndexFailure> {
        if leader == self.id
            || self
                .transport
                .peer_protocol(leader)
                .is_none_or(|version| version < PROTOCOL_VERSION_READ_INDEX)
        {
            return Err(ReadIndexFailure::Unsupported { leader });
        }
        let node = self.id;
        let deadline = tokio::time::Instant::now() + timeout;
        let consistency = match mode {
            ReadMode::Linearizable => ReadConsistency::Linearizable,
            ReadMode::Lease => ReadConsistency::Lease,
        };
        let overloaded = |in_flight| ReadIndexFailure::Overloaded {
            node,
            leader,
            in_flight,
        };
        if self.forwarder.reads.cap == 0 {
            return Err(overloaded(0));
        }
        let lost = |cause| ReadIndexFailure::Lost {
            node,
            leader,
            cause,
        };
        let (joiner, answer) = oneshot::channel();
        match self
            .read_batches(leader, consistency, timeout)
            .try_send(joiner)
        {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(overloaded(self.forwarder.reads.cap))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(lost(LostCause::Stopped)),
        }
        let index = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(index)) => index?,
            Ok(Err(_)) => return Err(lost(LostCause::Stopped)),
            Err(_) => return Err(lost(LostCause::Timeout)),
        };
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout_at(deadline, async move {
            applied.wait_for(|applied| *applied >= index).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => {
                self.forwarder
                    .follower_reads
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics.reads.inc();
                Ok(index)
            }
            Ok(false) => Err(lost(LostCause::Stopped)),
            Err(_) => Err(ReadIndexFailure::Behind {
                node,
                index,
                applied: self.applied_index(),
            }),
        }
    }

    /// The queue of reads waiting for a read index from `leader` in `consistency`, and the
    /// task that serves it, started on first use.
    fn read_batches(
        &self,
        leader: NodeId,
        consistency: ReadConsistency,
        timeout: Duration,
    ) -> mpsc::Sender<ReadJoiner> {
        let mut batches = self
            .forwarder
            .batches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(queue) = batches.get(&(leader, consistency)) {
            if !queue.is_closed() {
                return queue.clone();
            }
        }
        let (queue, joiners) = mpsc::channel(self.forwarder.reads.cap.max(1));
        batches.insert((leader, consistency), queue.clone());
        let node = self.clone();
        tokio::spawn(async move {
            node.drive_read_batches(leader, consistency, timeout, joiners)
                .await
        });
        queue
    }

    /// Asks `leader` for one read index per batch of reads (as etcd's
    /// `linearizableReadLoop` does): every read queued while a request is out goes in the
    /// next one, so a follower sends one frame per round trip instead of one per read.
    /// Sound because every read in a batch was queued before its request was sent, so the
    /// leader's answer covers every write acknowledged before any of them started.
    async fn drive_read_batches(
        self,
        leader: NodeId,
        consistency: ReadConsistency,
        timeout: Duration,
        mut joiners: mpsc::Receiver<ReadJoiner>,
    ) {
        while let Some(first) = joiners.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = joiners.try_recv() {
                batch.push(more);
            }
            batch.retain(|joiner| !joiner.is_closed());
            if batch.is_empty() {
                continue;
            }
            let outcome = self.request_read_index(leader, consistency, timeout).await;
            for joiner in batch {
                let _ = joiner.send(outcome.clone());
            }
        }
    }

    /// Sends one read index request to `leader` and waits for its answer, within `timeout`.
    async fn request_read_index(
        &self,
        leader: NodeId,
        consistency: ReadConsistency,
        timeout: Duration,
    ) -> Result<u64, ReadIndexFailure> {
        let transport = &self.transport;
        let node = self.id;
        let deadline = tokio::time::Instant::now() + timeout;
        let overloaded = |in_flight| ReadIndexFailure::Overloaded {
            node,
            leader,
            in_flight,
        };
        let mut slot = self.forwarder.reserve_read(leader).map_err(overloaded)?;
        let link_lost = link_lost(transport, leader);
        let frame = PeerFrame::ReadIndex(ReadIndexRequest {
            request_id: slot.id,
            consistency,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
        match transport.send_forward(leader, frame) {
            Ok(()) => {}
            Err(SendError::QueueFull { .. }) => {
                return Err(overloaded(self.forwarder.reads_in_flight()))
            }
            Err(SendError::UnknownPeer { .. } | SendError::NotFromThisNode { .. }) => {
                return Err(ReadIndexFailure::Unsupported { leader })
            }
            Err(SendError::Shutdown) => {
                return Err(ReadIndexFailure::Lost {
                    node,
                    leader,
                    cause: LostCause::Stopped,
                })
            }
        }
        self.forwarder
            .read_index_sent
            .fetch_add(1, Ordering::Relaxed);
        let lost = |cause| ReadIndexFailure::Lost {
            node,
            leader,
            cause,
        };
        // Unlike a write, a read has nothing to wait for once leadership moved: the old
        // leader's answer would be sound but may never come, and the client can retry.
        let outcome = tokio::select! {
            biased;
            outcome = &mut slot.answer => outcome.map_err(|_| lost(LostCause::Stopped))?,
            () = link_lost => return Err(lost(LostCause::LinkLost)),
            () = self.leader_changed_from(leader) => return Err(lost(LostCause::LeaderChanged)),
            () = tokio::time::sleep_until(deadline) => return Err(lost(LostCause::Timeout)),
        };
        let index = match outcome {
            ReadIndexOutcome::Index { index } => index,
            ReadIndexOutcome::NotLeader { leader_hint } => {
                return Err(ReadIndexFailure::NotLeader {
                    node,
                    leader,
                    hint: leader_hint,
                })
            }
            ReadIndexOutcome::Timeout => {
                return Err(ReadIndexFailure::LeaderTimeout { node, leader })
            }
            ReadIndexOutcome::Stopped => return Err(lost(LostCause::Stopped)),
        };
        Ok(index)
    }

    /// The leader's side of a follower read: runs the barrier `request` asks for and
    /// answers the index it may be served at. The leader's own state machine need not have
    /// applied it: the follower waits for its own.
    async fn serve_read_index(&self, from: NodeId, request: ReadIndexRequest) {
        self.forwarder
            .read_index_served
            .fetch_add(1, Ordering::Relaxed);
        let mode = match request.consistency {
            ReadConsistency::Linearizable => ReadMode::Linearizable,
            ReadConsistency::Lease => ReadMode::Lease,
        };
        let timeout = Duration::from_millis(request.timeout_ms)
            .clamp(Duration::from_millis(1), LEADER_TIMEOUT_MAX);
        let outcome = self.confirmed_read_index(mode, timeout).await;
        let reply = PeerFrame::ReadIndexReply(ReadIndexReply {
            request_id: request.request_id,
            outcome,
        });
        if let Err(e) = self.transport.send_forward(from, reply) {
            // The follower's wait ends on its own (timeout or link loss).
            tracing::debug!(
                id = self.id,
                peer = from,
                "cannot queue a read index reply: {e}"
            );
        }
    }

    /// The index a read in `mode` may be served at, once the core confirmed it (the core
    /// batches every read waiting in one heartbeat round); unlike [`Node::read_barrier`]
    /// it does not wait for this node's own state machine.
    async fn confirmed_read_index(&self, mode: ReadMode, timeout: Duration) -> ReadIndexOutcome {
        let (reply, answer) = oneshot::channel();
        if self
            .requests
            .send(super::Request::Read { mode, reply })
            .await
            .is_err()
        {
            return ReadIndexOutcome::Stopped;
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(index))) => ReadIndexOutcome::Index { index },
            Ok(Ok(Err(leader_hint))) => ReadIndexOutcome::NotLeader { leader_hint },
            Ok(Err(_)) => ReadIndexOutcome::Stopped,
            Err(_) => ReadIndexOutcome::Timeout,
        }
    }

    /// Serves the forward frames peers send this node: answers to its own forwards, and
    /// forwards it must propose as the leader. Runs until the transport drops the sink.
    pub(super) async fn serve_forwards(self, mut frames: mpsc::Receiver<(NodeId, PeerFrame)>) {
        while let Some((from, frame)) = frames.recv().await {
            match frame {
                PeerFrame::ForwardReply(reply) => self.forwarder.resolve(from, reply),
                PeerFrame::Forward(forward) => {
                    let node = self.clone();
                    tokio::spawn(async move { node.propose_forwarded(from, forward).await });
                }
                PeerFrame::ReadIndexReply(reply) => self.forwarder.resolve_read(from, reply),
                PeerFrame::ReadIndex(request) => {
                    let node = self.clone();
                    tokio::spawn(async move { node.serve_read_index(from, request).await });
                }
                // The transport delivers Raft envelopes on their own channel.
                PeerFrame::Raft(_) => {}
            }
        }
    }

    /// Proposes a write `from` forwarded, as the API would a client's, and answers it.
    ///
    /// A stopping node proposes no forward (the follower answers 503, nothing proposed)
    /// and exits only once every forward it did propose has its answer queued
    /// ([`Node::forwards_quiesced`]): the follower's client would otherwise see
    /// the link close with its write's outcome unknown. The count is taken before the
    /// check, and `begin_stop` sets the flag before the stop waits on the count, so each
    /// forward is either refused or waited for.
    async fn propose_forwarded(&self, from: NodeId, forward: Forward) {
        self.forwarder.served.fetch_add(1, Ordering::Relaxed);
        let _answering = self.forwarder.begin_answering();
        let request_id = forward.request_id;
        let outcome = if self.is_stopping() {
            ForwardOutcome::Stopped
        } else {
            self.forwarded_outcome(forward).await
        };
        let reply = PeerFrame::ForwardReply(ForwardReply {
            request_id,
            outcome,
        });
        if let Err(e) = self.transport.send_forward(from, reply) {
            // The follower answers "unknown outcome" when its wait ends.
            tracing::debug!(
                id = self.id,
                peer = from,
                "cannot queue a forward reply: {e}"
            );
        }
    }

    /// Resolves once every forward this node proposed as the leader has its answer
    /// queued on the peer link, and no forward has arrived for `quiet`. Forwards that
    /// arrive after [`Node::begin_stop`] are refused at once, and a follower refused so
    /// sends this node no more ([`Node::forward_write`]): `quiet`, a heartbeat interval,
    /// covers those it sent before the refusal reached it. A stopping node waits for this,
    /// then for the links to write the answers ([`Node::finish_stop`]).
    pub async fn forwards_quiesced(&self, quiet: Duration) {
        loop {
            self.forwarder.all_answered().await;
            let served = self.forwarder.served.load(Ordering::SeqCst);
            tokio::time::sleep(quiet).await;
            if self.forwarder.served.load(Ordering::SeqCst) == served
                && self.forwarder.answering.load(Ordering::SeqCst) == 0
            {
                return;
            }
        }
    }

    async fn forwarded_outcome(&self, forward: Forward) -> ForwardOutcome {
        if let Err(refused) = admissible(self.id, &forward) {
            return refused;
        }
        let permit = match self.admit_write(forward.command.len() as u64) {
            Ok(permit) => permit,
            Err(e) => return refusal(e),
        };
        let timeout = Duration::from_millis(forward.timeout_ms)
            .clamp(Duration::from_millis(1), LEADER_TIMEOUT_MAX);
        let outcome = match self.write(forward.command, timeout).await {
            Ok((index, applied)) => ForwardOutcome::Applied { index, applied },
            Err(e) => refusal(e),
        };
        drop(permit);
        outcome
    }
}

/// Whether the leader `id` may propose `forward` at all: its role must permit a write
/// (checked here, whatever the follower checked: the leader proposes only what the role it
/// is told permits), and its command must be a client command within the size limit.
fn admissible(id: NodeId, forward: &Forward) -> Result<(), ForwardOutcome> {
    if !forward.role.permits(Role::Write) {
        return Err(ForwardOutcome::Forbidden { role: forward.role });
    }
    if forward.command.len() as u64 > COMMAND_BYTES_MAX
        || crate::session::Command::decode(&forward.command).is_none()
    {
        return Err(ForwardOutcome::Invalid {
            message: bounded_message(format!(
                "leader {id} was forwarded {} bytes that are not a client command (at most \
                 {COMMAND_BYTES_MAX} bytes); nothing was proposed",
                forward.command.len()
            )),
        });
    }
    Ok(())
}

/// The outcome for a write the leader refused or could not finish.
fn refusal(error: RequestError) -> ForwardOutcome {
    let message = || bounded_message(error.to_string());
    match &error {
        RequestError::NotLeader(leader_hint) => ForwardOutcome::NotLeader {
            leader_hint: *leader_hint,
        },
        RequestError::Stopped => ForwardOutcome::Stopped,
        RequestError::Unknown => ForwardOutcome::Unknown { message: message() },
        RequestError::NotCommitted => ForwardOutcome::NotCommitted,
        RequestError::NoSpace(_) => ForwardOutcome::NoSpace { message: message() },
        RequestError::Overloaded { .. } => ForwardOutcome::Overloaded { message: message() },
        RequestError::TransferInProgress => ForwardOutcome::TransferInProgress,
        RequestError::NotApplied(_) => ForwardOutcome::Invalid { message: message() },
    }
}

/// Starts the task that serves the forward frames `transport` received, those that came
/// before it included.
pub(super) fn start<S: StateMachine>(
    node: &Node<S>,
    transport: &Transport,
    runtime: &tokio::runtime::Handle,
) {
    match transport.take_forward_frames() {
        Some(frames) => {
            runtime.spawn(node.clone().serve_forwards(frames));
        }
        // Only if something else took them; forwards then go unanswered (counted).
        None => tracing::error!(
            id = node.id,
            "the transport's forward frames were taken already; forwarded writes and reads will not be served"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Applied;

    #[test]
    fn the_table_refuses_past_its_cap_and_frees_slots_when_waits_end() {
        let forwarder = Forwarder::default();
        let mut slots = Vec::new();
        for _ in 0..FORWARDS_IN_FLIGHT_MAX {
            slots.push(forwarder.reserve(2).expect("below the cap"));
        }
        assert_eq!(forwarder.reserve(2).err(), Some(FORWARDS_IN_FLIGHT_MAX));
        assert_eq!(forwarder.dropped_overload.load(Ordering::Relaxed), 1);
        // The wait of the first one ends: its slot is dropped.
        drop(slots.swap_remove(0));
        assert!(
            forwarder.reserve(2).is_ok(),
            "a finished wait frees its slot"
        );
    }

    #[tokio::test]
    async fn all_answered_waits_for_every_forward_being_served() {
        let forwarder = Forwarder::default();
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, forwarder.all_answered())
            .await
            .expect("none served: at once");
        let first = forwarder.begin_answering();
        let second = forwarder.begin_answering();
        let waiting = forwarder.all_answered();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting.as_mut())
                .await
                .is_err(),
            "two are being served"
        );
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting.as_mut())
                .await
                .is_err(),
            "one is still being served"
        );
        drop(second);
        tokio::time::timeout(wait, waiting)
            .await
            .expect("the last one's answer wakes the wait");
    }

    #[test]
    fn a_leader_that_said_it_is_stopping_is_not_sent_to_until_reconnected() {
        let forwarder = Forwarder::default();
        assert!(!forwarder.leader_is_stopping(1, 3));
        forwarder.mark_leader_stopping(1, 3);
        assert!(forwarder.leader_is_stopping(1, 3));
        assert!(!forwarder.leader_is_stopping(2, 3), "another leader");
        assert!(
            !forwarder.leader_is_stopping(1, 4),
            "connected to it again: it may have restarted"
        );
    }

    #[test]
    fn a_reply_reaches_only_the_forward_it_answers_and_only_from_the_node_asked() {
        let forwarder = Forwarder::default();
        let mut slot = forwarder.reserve(2).expect("a slot");
        let (id, answer) = (slot.id, &mut slot.answer);
        let reply = |request_id| ForwardReply {
            request_id,
            outcome: ForwardOutcome::Applied {
                index: 7,
                applied: Applied::Fresh(vec![1]),
            },
        };
        forwarder.resolve(3, reply(id));
        assert!(
            answer.try_recv().is_err(),
            "a reply from node 3 for a forward to 2"
        );
        forwarder.resolve(2, reply(id + 1));
        assert!(answer.try_recv().is_err(), "a reply for another forward");
        forwarder.resolve(2, reply(id));
        assert_eq!(answer.try_recv().ok(), Some(reply(id).outcome));
        assert_eq!(forwarder.in_flight(), 0);
    }

    #[test]
    fn the_leader_proposes_a_forward_only_for_a_role_that_permits_writes() {
        let command = crate::session::Command {
            request_id: None,
            body: Bytes::from_static(b"a state machine command"),
        };
        let forward = |role, command: Bytes| Forward {
            request_id: 1,
            role,
            command,
            timeout_ms: 1000,
        };
        let encoded = Bytes::from(command.encode());
        assert_eq!(
            admissible(1, &forward(Role::Read, encoded.clone())),
            Err(ForwardOutcome::Forbidden { role: Role::Read })
        );
        assert_eq!(
            admissible(1, &forward(Role::Write, encoded.clone())),
            Ok(())
        );
        assert_eq!(admissible(1, &forward(Role::Admin, encoded)), Ok(()));
        let oversize = Bytes::from(vec![0u8; COMMAND_BYTES_MAX as usize + 1]);
        assert!(matches!(
            admissible(1, &forward(Role::Admin, oversize)),
            Err(ForwardOutcome::Invalid { .. })
        ));
    }

    #[test]
    fn every_refusal_says_whether_the_write_may_still_take_effect() {
        // Only a proposed write whose outcome is unknown may still take effect.
        assert!(matches!(
            refusal(RequestError::Unknown),
            ForwardOutcome::Unknown { .. }
        ));
        assert_eq!(
            refusal(RequestError::NotLeader(Some(3))),
            ForwardOutcome::NotLeader {
                leader_hint: Some(3)
            }
        );
        assert_eq!(
            refusal(RequestError::NotCommitted),
            ForwardOutcome::NotCommitted
        );
        assert_eq!(refusal(RequestError::Stopped), ForwardOutcome::Stopped);
    }
}
