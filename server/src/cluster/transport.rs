//! Peer connections between the nodes of a cluster.
//!
//! Every node listens on its `peer_addr` and keeps ONE outbound connection
//! to every other node, used only for sending; what a node receives comes
//! over the connections the others opened to it. Two connections per pair
//! keep each direction simple: a sender never reads, a receiver never
//! writes.
//!
//! Frames are tokio-util length-delimited (4-byte big-endian length, at
//! most [`FRAME_BYTES_MAX`]), each carrying one postcard-encoded
//! [`Wire`]: first a `Hello` naming the sender and a check of the cluster
//! configuration, then messages. A connection that sends anything that does
//! not decode, a message before its `Hello`, a `Hello` from an unknown node,
//! from this node itself or from a differently configured cluster is logged
//! and dropped; the node carries on.
//!
//! Messages to a peer that is down are dropped, not queued: Raft and the
//! data plane retransmit what matters. The queue towards a peer is bounded
//! ([`SEND_QUEUE_MAX`]) for the same reason — a slow peer loses messages
//! instead of growing this node. A lost connection is reconnected with a
//! backoff from [`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`], and so is
//! one that ends within [`STABLE_AFTER`] of being opened (something in
//! between accepted it for a peer it cannot reach).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// A node's id in the cluster configuration.
pub type NodeId = u64;

/// Largest frame accepted or sent (a snapshot chunk or a batch of entries
/// must fit; bigger ones are refused by both ends).
pub const FRAME_BYTES_MAX: usize = 80 * 1024 * 1024;
/// Messages queued towards one peer before further ones are dropped.
pub const SEND_QUEUE_MAX: usize = 4096;
/// First reconnect delay after a failed connection attempt.
pub const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A connection that lasted this long is reconnected at once when it ends;
/// a shorter one counts as a failed attempt (backoff).
pub const STABLE_AFTER: Duration = Duration::from_secs(1);
/// How long a new inbound connection may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages received but not yet taken by the node.
const INBOUND_QUEUE_MAX: usize = 8192;

/// What travels in one frame.
#[derive(Debug, Serialize, Deserialize)]
pub enum Wire<M> {
    /// The first frame of a connection.
    Hello {
        /// The sending node.
        from: NodeId,
        /// [`cluster_check`] of the sender's configuration.
        cluster: u64,
    },
    /// Everything after it.
    Message(M),
}

/// A fingerprint of the cluster's name (`cluster_name` in the cluster
/// file): nodes of two clusters refuse each other's connections. Not of the
/// node list: members join and leave at run time, and a joining node's file
/// lists nodes the others' files do not.
pub fn cluster_check(cluster_name: &str) -> u64 {
    // FNV-1a: stable across builds and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in cluster_name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One peer's send queue, and what stops its sender task.
type PeerQueues = HashMap<NodeId, (mpsc::Sender<Bytes>, CancellationToken)>;

/// Sends to peers; cheap to clone.
#[derive(Clone)]
pub struct Transport<M> {
    me: NodeId,
    check: u64,
    peers: Arc<std::sync::RwLock<PeerQueues>>,
    /// Who may connect (the peers, updated with them).
    known: Arc<std::sync::RwLock<BTreeSet<NodeId>>>,
    /// Messages `send` dropped (see [`Transport::dropped`]).
    dropped: Arc<std::sync::atomic::AtomicU64>,
    shutdown: CancellationToken,
    _message: std::marker::PhantomData<fn(M)>,
}

/// What [`Transport::start`] returns: the sender and the stream of
/// `(from, message)` received from peers.
pub struct Started<M> {
    /// Sends to peers.
    pub transport: Transport<M>,
    /// Messages from peers, in the order each connection delivered them.
    pub inbound: mpsc::Receiver<(NodeId, M)>,
    /// The address the listener is bound to.
    pub local_addr: SocketAddr,
}

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    /// Binds `me`'s peer address and starts a sender task per other node,
    /// connecting to the address `via` gives for it, if any, instead of its
    /// address in `nodes` (a proxy or NAT in between; the fingerprint
    /// exchanged in `Hello` is still that of `nodes`). Everything stops
    /// when `shutdown` is cancelled.
    ///
    /// # Errors
    /// The listen address cannot be bound, or `me` is not among `nodes`.
    pub async fn start(
        me: NodeId,
        nodes: &[(NodeId, SocketAddr)],
        via: &BTreeMap<NodeId, SocketAddr>,
        check: u64,
        shutdown: CancellationToken,
    ) -> std::io::Result<Started<M>> {
        let Some(&(_, listen)) = nodes.iter().find(|(id, _)| *id == me) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("node {me} is not in the cluster configuration"),
            ));
        };
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self::start_with_listener_via(
            me, nodes, via, check, listener, local_addr, shutdown,
        ))
    }

    /// [`Transport::start`] on an already bound listener (tests bind port 0
    /// first to learn the addresses), every peer at its address in `nodes`.
    pub fn start_with_listener(
        me: NodeId,
        nodes: &[(NodeId, SocketAddr)],
        listener: TcpListener,
        local_addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Started<M> {
        let check = cluster_check(ckpt_replication::config::CLUSTER_NAME_DEFAULT);
        Self::start_with_listener_via(
            me,
            nodes,
            &BTreeMap::new(),
            check,
            listener,
            local_addr,
            shutdown,
        )
    }

    /// [`Transport::start`] on an already bound listener.
    pub fn start_with_listener_via(
        me: NodeId,
        nodes: &[(NodeId, SocketAddr)],
        via: &BTreeMap<NodeId, SocketAddr>,
        check: u64,
        listener: TcpListener,
        local_addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Started<M> {
        let known = Arc::new(std::sync::RwLock::new(BTreeSet::new()));
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE_MAX);
        tokio::spawn(accept_loop::<M>(
            me,
            check,
            known.clone(),
            listener,
            inbound_tx,
            shutdown.clone(),
        ));
        let transport = Transport {
            me,
            check,
            peers: Arc::new(std::sync::RwLock::new(HashMap::new())),
            known,
            dropped: Arc::default(),
            shutdown,
            _message: std::marker::PhantomData,
        };
        for &(id, addr) in nodes {
            let addr = match via.get(&id) {
                Some(&through) if id != me => {
                    tracing::info!(peer = id, peer_addr = %addr, via = %through, "reaching a peer through another address (--peer-via)");
                    through
                }
                _ => addr,
            };
            transport.add_peer(id, addr);
        }
        Started {
            transport,
            inbound,
            local_addr,
        }
    }

    /// Starts sending to `id` at `addr` and accepts its connections (a
    /// member added at run time); nothing if it is a peer already or me.
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) {
        if id == self.me {
            return;
        }
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if peers.contains_key(&id) {
            return;
        }
        let stop = self.shutdown.child_token();
        let (tx, rx) = mpsc::channel(SEND_QUEUE_MAX);
        tokio::spawn(sender_loop(self.me, self.check, id, addr, rx, stop.clone()));
        peers.insert(id, (tx, stop));
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    /// Stops sending to `id` and refuses its new connections (a member
    /// removed).
    pub fn remove_peer(&self, id: NodeId) {
        let removed = self
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some((_, stop)) = removed {
            stop.cancel();
        }
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// The peers sent to now, ascending.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Messages [`Transport::send`] has dropped so far: to a peer whose
    /// queue was full (slow or unreachable), to a node that is not a peer,
    /// or larger than a frame. Raft and the data plane send again what
    /// matters, but a rising count means a peer link cannot keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues `message` for `to`. Returns false when it was dropped: an
    /// unknown node, a full queue, or a message larger than a frame.
    pub fn send(&self, to: NodeId, message: &M) -> bool {
        let sent = self.try_send(to, message);
        if !sent {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        sent
    }

    fn try_send(&self, to: NodeId, message: &M) -> bool {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let Some((queue, _)) = peers.get(&to) else {
            tracing::warn!(to, "dropping a message to a node that is not a peer");
            return false;
        };
        let bytes = match postcard::to_stdvec(&Wire::Message(message)) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, to, "encoding a peer message failed; dropped");
                return false;
            }
        };
        if bytes.len() > FRAME_BYTES_MAX {
            tracing::error!(
                to,
                bytes = bytes.len(),
                frame_bytes_max = FRAME_BYTES_MAX,
                "a peer message is larger than a frame; dropped"
            );
            return false;
        }
        queue.try_send(Bytes::from(bytes)).is_ok()
    }
}

// `Wire::Message(&M)` must encode exactly like `Wire::Message(M)`; serde
// serialises a reference like its referent, so a `Wire<&M>` is a `Wire<M>`
// on the wire.

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}

async fn accept_loop<M>(
    me: NodeId,
    check: u64,
    known: Arc<std::sync::RwLock<BTreeSet<NodeId>>>,
    listener: TcpListener,
    inbound: mpsc::Sender<(NodeId, M)>,
    shutdown: CancellationToken,
) where
    M: DeserializeOwned + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(receive(
                    me,
                    check,
                    known.clone(),
                    stream,
                    remote,
                    inbound.clone(),
                    shutdown.clone(),
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a peer connection failed");
                tokio::time::sleep(BACKOFF_MIN).await;
            }
        }
    }
}

/// Reads one inbound connection until it ends or misbehaves.
async fn receive<M>(
    me: NodeId,
    check: u64,
    known: Arc<std::sync::RwLock<BTreeSet<NodeId>>>,
    stream: TcpStream,
    remote: SocketAddr,
    inbound: mpsc::Sender<(NodeId, M)>,
    shutdown: CancellationToken,
) where
    M: DeserializeOwned + Send + 'static,
{
    let mut frames = FramedRead::new(stream, codec());
    let hello = tokio::select! {
        _ = shutdown.cancelled() => return,
        hello = tokio::time::timeout(HELLO_TIMEOUT, frames.next()) => hello,
    };
    let from = match hello {
        Ok(Some(Ok(frame))) => match postcard::from_bytes::<Wire<M>>(&frame) {
            Ok(Wire::Hello { from, cluster }) => {
                if cluster != check {
                    tracing::warn!(%remote, from, "a peer with a different cluster configuration; dropping its connection");
                    return;
                }
                let is_peer = known
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&from);
                if from == me || !is_peer {
                    tracing::warn!(%remote, from, "a peer connection claims a node id that is not a peer; dropped");
                    return;
                }
                from
            }
            Ok(Wire::Message(_)) => {
                tracing::warn!(%remote, "a peer sent a message before Hello; dropping its connection");
                return;
            }
            Err(error) => {
                tracing::warn!(%remote, %error, "a peer's Hello does not decode; dropping its connection");
                return;
            }
        },
        Ok(Some(Err(error))) => {
            tracing::warn!(%remote, %error, "bad frame from a peer; dropping its connection");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            tracing::warn!(%remote, "a peer connection sent no Hello in time; dropped");
            return;
        }
    };
    tracing::debug!(%remote, from, "peer connected");
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            frame = frames.next() => frame,
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                tracing::warn!(%remote, from, %error, "bad frame from a peer; dropping its connection");
                return;
            }
            None => {
                tracing::debug!(%remote, from, "peer connection closed");
                return;
            }
        };
        match postcard::from_bytes::<Wire<M>>(&frame) {
            Ok(Wire::Message(message)) => {
                if inbound.send((from, message)).await.is_err() {
                    return;
                }
            }
            Ok(Wire::Hello { from: again, .. }) => {
                tracing::warn!(%remote, from, again, "a second Hello on a peer connection; dropped");
                return;
            }
            Err(error) => {
                tracing::warn!(%remote, from, %error, "a peer message does not decode; dropping its connection");
                return;
            }
        }
    }
}

/// Keeps the outbound connection to one peer and writes its queue.
async fn sender_loop(
    me: NodeId,
    check: u64,
    peer: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Bytes>,
    shutdown: CancellationToken,
) {
    let hello = match postcard::to_stdvec(&Wire::<()>::Hello {
        from: me,
        cluster: check,
    }) {
        Ok(hello) => Bytes::from(hello),
        Err(error) => {
            tracing::error!(%error, "encoding Hello failed");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    let mut was_connected = true;
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = TcpStream::connect(addr) => connected,
        };
        let lasted = match connected {
            Ok(stream) => {
                let opened = tokio::time::Instant::now();
                match serve(stream, &hello, &mut queue, &shutdown, peer, addr).await {
                    Served::Shutdown => return,
                    Served::Ended => {}
                }
                was_connected = true;
                opened.elapsed() >= STABLE_AFTER
            }
            Err(error) => {
                if was_connected {
                    tracing::info!(peer, %addr, %error, "peer unreachable; retrying");
                    was_connected = false;
                }
                false
            }
        };
        if lasted {
            // It was up: reconnect at once.
            backoff = BACKOFF_MIN;
            continue;
        }
        // The peer is down, or the connection ended at once: something
        // between the nodes (a proxy, a NAT, a load balancer) accepts
        // connections for a peer it cannot reach, or the peer drops them.
        // Back off rather than reconnect in a loop (tests/cluster_partition.rs
        // saw ~1,000 connections a second through a partitioned proxy), and
        // drop what was queued for it.
        while queue.try_recv().is_ok() {}
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// How a connection to a peer ended.
enum Served {
    /// The node is shutting down.
    Shutdown,
    /// The connection failed (or `Hello` could not be sent).
    Ended,
}

/// Says `Hello` on `stream`, then sends what `queue` holds until the
/// connection fails.
async fn serve(
    stream: TcpStream,
    hello: &Bytes,
    queue: &mut mpsc::Receiver<Bytes>,
    shutdown: &CancellationToken,
    peer: NodeId,
    addr: SocketAddr,
) -> Served {
    let _ = stream.set_nodelay(true);
    let mut frames = FramedWrite::new(stream, codec());
    if frames.send(hello.clone()).await.is_err() {
        return Served::Ended;
    }
    tracing::info!(peer, %addr, "connected to peer");
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Served::Shutdown,
            next = queue.recv() => next,
        };
        let Some(bytes) = next else {
            return Served::Shutdown;
        };
        // Batch what is queued behind it into one flush.
        let mut failed = frames.feed(bytes).await.is_err();
        while !failed {
            match queue.try_recv() {
                Ok(more) => failed = frames.feed(more).await.is_err(),
                Err(_) => break,
            }
        }
        if failed || SinkExt::<Bytes>::flush(&mut frames).await.is_err() {
            tracing::info!(peer, %addr, "lost the connection to a peer; reconnecting");
            return Served::Ended;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Test {
        Ping(u64),
        Blob(Vec<u8>),
    }

    async fn bound() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    async fn next(inbound: &mut mpsc::Receiver<(NodeId, Test)>) -> (NodeId, Test) {
        tokio::time::timeout(Duration::from_secs(20), inbound.recv())
            .await
            .expect("a message arrives")
            .expect("the transport runs")
    }

    /// Sends `message` until one arrives (the first ones may be dropped
    /// while the connection is being made), then returns what arrived.
    async fn deliver(
        from: &Transport<Test>,
        to: NodeId,
        inbound: &mut mpsc::Receiver<(NodeId, Test)>,
        message: Test,
    ) -> (NodeId, Test) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            from.send(to, &message);
            if let Ok(Some(got)) =
                tokio::time::timeout(Duration::from_millis(50), inbound.recv()).await
            {
                return got;
            }
            assert!(tokio::time::Instant::now() < deadline, "never delivered");
        }
    }

    #[tokio::test]
    async fn messages_go_both_ways_in_order() {
        let shutdown = CancellationToken::new();
        let (l1, a1) = bound().await;
        let (l2, a2) = bound().await;
        let nodes = [(1, a1), (2, a2)];
        let n1 = Transport::<Test>::start_with_listener(1, &nodes, l1, a1, shutdown.clone());
        let mut n2 = Transport::<Test>::start_with_listener(2, &nodes, l2, a2, shutdown.clone());
        let mut n1 = n1;
        assert_eq!(
            deliver(&n1.transport, 2, &mut n2.inbound, Test::Ping(0)).await,
            (1, Test::Ping(0))
        );
        // Connected: now everything arrives, in order.
        for i in 1..100 {
            assert!(n1.transport.send(2, &Test::Ping(i)));
        }
        let mut seen = 0;
        while seen < 99 {
            match next(&mut n2.inbound).await {
                (1, Test::Ping(0)) => {}
                (1, Test::Ping(i)) => {
                    seen += 1;
                    assert_eq!(i, seen, "in order");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let blob = Test::Blob(vec![7; 1 << 20]);
        assert_eq!(
            deliver(&n2.transport, 1, &mut n1.inbound, blob.clone()).await,
            (2, blob)
        );
        assert!(!n1.transport.send(9, &Test::Ping(1)), "not a peer");
        shutdown.cancel();
    }

    /// A peer nobody answers for: its queue fills, and what does not fit is
    /// dropped and counted.
    #[tokio::test]
    async fn messages_beyond_a_full_queue_are_dropped_and_counted() {
        let shutdown = CancellationToken::new();
        let (l1, a1) = bound().await;
        // A port that refuses connections: bound, then released.
        let (l2, a2) = bound().await;
        drop(l2);
        let nodes = [(1, a1), (2, a2)];
        let n1 = Transport::<Test>::start_with_listener(1, &nodes, l1, a1, shutdown.clone());
        let total = SEND_QUEUE_MAX as u64 + 100;
        let queued = (0..total)
            .filter(|i| n1.transport.send(2, &Test::Ping(*i)))
            .count() as u64;
        assert!(queued <= SEND_QUEUE_MAX as u64 + 1, "queued {queued}");
        assert_eq!(n1.transport.dropped(), total - queued);
        assert!(!n1.transport.send(9, &Test::Ping(0)), "not a peer");
        assert_eq!(n1.transport.dropped(), total - queued + 1);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn garbage_and_impostors_are_dropped_and_the_node_keeps_serving() {
        let shutdown = CancellationToken::new();
        let (l1, a1) = bound().await;
        let (l2, a2) = bound().await;
        let nodes = [(1, a1), (2, a2)];
        let mut n1 = Transport::<Test>::start_with_listener(1, &nodes, l1, a1, shutdown.clone());

        // Raw garbage: a length prefix followed by bytes that do not decode.
        let mut raw = TcpStream::connect(a1).await.unwrap();
        raw.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        // An oversize length.
        let mut huge = TcpStream::connect(a1).await.unwrap();
        huge.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();

        // A well-formed Hello from a node id that is not a peer, then a message.
        let mut impostor = FramedWrite::new(TcpStream::connect(a1).await.unwrap(), codec());
        let hello = postcard::to_stdvec(&Wire::<Test>::Hello {
            from: 7,
            cluster: cluster_check(ckpt_replication::config::CLUSTER_NAME_DEFAULT),
        })
        .unwrap();
        impostor.send(Bytes::from(hello)).await.unwrap();
        let msg = postcard::to_stdvec(&Wire::Message(Test::Ping(666))).unwrap();
        let _ = impostor.send(Bytes::from(msg.clone())).await;
        // A message without Hello.
        let mut rude = FramedWrite::new(TcpStream::connect(a1).await.unwrap(), codec());
        let _ = rude.send(Bytes::from(msg.clone())).await;
        // A right node id with another cluster's configuration.
        let mut foreign = FramedWrite::new(TcpStream::connect(a1).await.unwrap(), codec());
        let hello = postcard::to_stdvec(&Wire::<Test>::Hello {
            from: 2,
            cluster: cluster_check(ckpt_replication::config::CLUSTER_NAME_DEFAULT) ^ 1,
        })
        .unwrap();
        foreign.send(Bytes::from(hello)).await.unwrap();
        let _ = foreign.send(Bytes::from(msg)).await;

        // The genuine peer still gets through, and nothing of the above did.
        let n2 = Transport::<Test>::start_with_listener(2, &nodes, l2, a2, shutdown.clone());
        let got = deliver(&n2.transport, 1, &mut n1.inbound, Test::Ping(1)).await;
        assert_eq!(got, (2, Test::Ping(1)));
        // Only more copies of the genuine message may follow.
        while let Ok(more) = n1.inbound.try_recv() {
            assert_eq!(more, (2, Test::Ping(1)), "only the genuine peer's messages");
        }
        shutdown.cancel();
    }

    /// With `via`, a node connects to the given address instead of the
    /// peer's configured one; the `Hello` still carries the fingerprint of
    /// the configured list, so the peer accepts it.
    #[tokio::test]
    async fn a_peer_is_reached_through_its_via_address() {
        let shutdown = CancellationToken::new();
        let (l1, a1) = bound().await;
        let (l2, a2) = bound().await;
        // The file's address of node 2: nothing listens there.
        let (unused, configured) = bound().await;
        drop(unused);
        let nodes = [(1, a1), (2, configured)];
        let via = BTreeMap::from([(2, a2)]);
        let n1 = Transport::<Test>::start_with_listener_via(
            1,
            &nodes,
            &via,
            cluster_check(ckpt_replication::config::CLUSTER_NAME_DEFAULT),
            l1,
            a1,
            shutdown.clone(),
        );
        let mut n2 = Transport::<Test>::start_with_listener(2, &nodes, l2, a2, shutdown.clone());
        let got = deliver(&n1.transport, 2, &mut n2.inbound, Test::Ping(3)).await;
        assert_eq!(got, (1, Test::Ping(3)));
        shutdown.cancel();
    }

    /// An address that accepts connections and closes them at once (a
    /// proxy cut off from the peer) is retried with backoff, not in a loop.
    #[tokio::test]
    async fn an_address_that_accepts_and_closes_is_retried_with_backoff() {
        let shutdown = CancellationToken::new();
        let (l1, a1) = bound().await;
        let (closer, a2) = bound().await;
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = closer.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(stream);
                }
            });
        }
        let nodes = [(1, a1), (2, a2)];
        let n1 = Transport::<Test>::start_with_listener(1, &nodes, l1, a1, shutdown.clone());
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < until {
            n1.transport.send(2, &Test::Ping(0));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Backoff 20, 40, 80, 160, 320, 500 ms: about 7 attempts a second.
        let attempts = accepted.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (1..=12).contains(&attempts),
            "{attempts} connections in one second"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_restarted_peer_is_reconnected() {
        let shutdown = CancellationToken::new();
        let (l1, a1) = bound().await;
        let (l2, a2) = bound().await;
        let nodes = [(1, a1), (2, a2)];
        let n1 = Transport::<Test>::start_with_listener(1, &nodes, l1, a1, shutdown.clone());
        let first = CancellationToken::new();
        let mut n2 = Transport::<Test>::start_with_listener(2, &nodes, l2, a2, first.clone());
        deliver(&n1.transport, 2, &mut n2.inbound, Test::Ping(1)).await;
        first.cancel();
        drop(n2);
        // Node 2 comes back on the same address.
        let l2 = loop {
            match TcpListener::bind(a2).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let mut n2 = Transport::<Test>::start_with_listener(2, &nodes, l2, a2, shutdown.clone());
        let got = deliver(&n1.transport, 2, &mut n2.inbound, Test::Ping(2)).await;
        assert_eq!(got, (1, Test::Ping(2)));
        shutdown.cancel();
    }
}
