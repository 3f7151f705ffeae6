//! One client connection: the version handshake, then pipelined requests
//! (each served on its own task, answered by request id), notifications
//! pushed as they come, and a clean close.
//!
//! Memory per connection is bounded in bytes: before `Hello` a frame body
//! may be at most [`HELLO_BODY_BYTES_MAX`]; replies — from the moment a
//! read reserves room for its data until the bytes are written to the
//! socket — hold at most `reply_queue_bytes_max` ([`ReplyBudget`]); the
//! in-flight permit of a request is released only when its reply is
//! written; notifications are bounded by the session's [`Outbox`]. A
//! client that does not read its socket therefore stalls its own requests
//! (and, once its reply budget is spent, the reading of its further
//! frames) instead of growing the server.
//!
//! Only a frame that cannot be decoded — bad magic, protocol version or
//! checksum, an oversize length, a kind a client may not send — ends the
//! connection, after a `Goodbye` that says why. A request whose body does
//! not decode, or that cannot be served, gets an error response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt_proto::wire::{
    ApiVersion, Frame, FrameCodec, FrameKind, Goodbye, Hello, HelloReply, Request, Response,
    HELLO_BODY_BYTES_MAX,
};
use ckpt_proto::{CkptError, ErrorCode};
use futures::{SinkExt, StreamExt};
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::{Outbox, QueuedNotification};
use crate::metrics::Metrics;
use crate::service::Service;

/// The unit the reply budget counts in: whole KiB, so that a bound of up
/// to a TiB fits the semaphore's u32 acquisitions.
const BUDGET_UNIT_BYTES: u64 = 1024;
/// Notifications written with one flush at most (replies are not held up
/// behind a long run of them).
const NOTIFICATIONS_PER_FLUSH_MAX: usize = 64;
/// What a reply other than a read is assumed to take before it is built.
pub const SMALL_REPLY_BYTES: u64 = BUDGET_UNIT_BYTES;

/// Node-wide gauges of the per-connection queues.
#[derive(Clone)]
pub struct QueueGauges {
    /// Reply bytes held by all connections.
    pub reply_bytes: IntGauge,
    /// Notification bytes queued on all connections.
    pub notification_bytes: IntGauge,
}

/// The bytes of replies one connection may hold at once.
pub struct ReplyBudget {
    units: Arc<Semaphore>,
    units_max: u32,
    gauge: IntGauge,
}

/// Room held in a [`ReplyBudget`] until the reply is written (dropped).
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    gauge: IntGauge,
}

impl ReplyBudget {
    /// A budget of `bytes_max` bytes.
    pub fn new(bytes_max: u64, gauge: IntGauge) -> Arc<ReplyBudget> {
        let units_max = u32::try_from(bytes_max / BUDGET_UNIT_BYTES)
            .unwrap_or(u32::MAX)
            .max(1);
        Arc::new(ReplyBudget {
            units: Arc::new(Semaphore::new(units_max as usize)),
            units_max,
            gauge,
        })
    }

    fn units(&self, bytes: u64) -> u32 {
        let units = bytes.div_ceil(BUDGET_UNIT_BYTES).max(1);
        u32::try_from(units).unwrap_or(u32::MAX).min(self.units_max)
    }

    /// Waits until `bytes` (at most the whole budget) are free and holds
    /// them. Hold nothing else from the budget while waiting: a waiter is
    /// served in order, so holding while waiting could wait forever.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let units = self.units(bytes);
        let permit = self.units.clone().acquire_many_owned(units).await.ok();
        if permit.is_some() {
            self.gauge.add(i64::from(units) * BUDGET_UNIT_BYTES as i64);
        }
        Reservation {
            permit,
            gauge: self.gauge.clone(),
        }
    }

    /// Holds `bytes` (at most the whole budget) if they are free now;
    /// never waits. Room freed goes to waiters first, so this never
    /// overtakes one.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let units = self.units(bytes);
        let permit = self.units.clone().try_acquire_many_owned(units).ok()?;
        self.gauge.add(i64::from(units) * BUDGET_UNIT_BYTES as i64);
        Some(Reservation {
            permit: Some(permit),
            gauge: self.gauge.clone(),
        })
    }

    /// Grows `reservation` to cover `bytes` if the room is free now (a
    /// reply larger than estimated); never waits.
    pub fn top_up(&self, reservation: &mut Reservation, bytes: u64) {
        let held = reservation
            .permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u32);
        let wanted = self.units(bytes);
        if wanted <= held {
            return;
        }
        if let Ok(extra) = self.units.clone().try_acquire_many_owned(wanted - held) {
            self.gauge
                .add(i64::from(wanted - held) * BUDGET_UNIT_BYTES as i64);
            match &mut reservation.permit {
                Some(permit) => permit.merge(extra),
                None => reservation.permit = Some(extra),
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(permit) = &self.permit {
            self.gauge
                .sub(permit.num_permits() as i64 * BUDGET_UNIT_BYTES as i64);
        }
    }
}

/// A frame for the writer, with what it holds until it is written.
struct Outgoing {
    frame: Frame,
    _reservation: Option<Reservation>,
    _in_flight: Option<OwnedSemaphorePermit>,
    /// When an answer was queued (the `out` stage).
    queued: Option<Instant>,
}

/// How long a client has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until the peer leaves, sends garbage, or the
/// server shuts down (then in-flight requests are finished first).
pub async fn serve(
    service: Arc<Service>,
    stream: TcpStream,
    config: Arc<Config>,
    gauges: QueueGauges,
    shutdown: CancellationToken,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    // Until the peer has said hello, only a hello-sized body is accepted.
    let mut frames = FramedRead::new(read, FrameCodec::new(HELLO_BODY_BYTES_MAX));
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let (note_tx, note_rx) = mpsc::unbounded_channel::<QueuedNotification>();
    let outbox = Outbox::new(
        note_tx,
        config.notification_queue_bytes_max,
        gauges.notification_bytes.clone(),
    );
    let budget = ReplyBudget::new(config.reply_queue_bytes_max, gauges.reply_bytes.clone());
    let writer = tokio::spawn(write_frames(
        FramedWrite::new(write, FrameCodec::new(u32::MAX)),
        out_rx,
        note_rx,
        outbox.clone(),
        service.metrics().clone(),
    ));

    let hello = match tokio::time::timeout(HELLO_TIMEOUT, frames.next()).await {
        Ok(Some(Ok(frame))) if frame.kind == FrameKind::Hello => frame.decode::<Hello>(),
        Ok(Some(Ok(frame))) => Err(CkptError::new(
            ErrorCode::NotInitialized,
            format!("expected Hello as the first frame, got {:?}", frame.kind),
        )),
        Ok(Some(Err(error))) => Err(CkptError::new(error.code(), error.to_string())),
        Ok(None) => return finish(writer, out_tx).await,
        Err(_) => Err(CkptError::new(ErrorCode::Timeout, "no Hello within 10 s")),
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(error) => {
            tracing::info!(%peer, %error, "refusing a connection");
            goodbye(&out_tx, error);
            return finish(writer, out_tx).await;
        }
    };
    let negotiated = ApiVersion::negotiate(hello.version);
    let reply = HelloReply {
        error: negotiated.err().map(|supported| {
            CkptError::new(
                ErrorCode::VersionMismatch,
                format!(
                    "version {}.{}.{} is not supported; this server supports {}.{}.{}",
                    hello.version.release_code as char,
                    hello.version.major,
                    hello.version.minor,
                    supported.release_code as char,
                    supported.major,
                    supported.minor
                ),
            )
        }),
        version: negotiated.unwrap_or_else(|v| v),
        frame_body_bytes_max: config.frame_body_bytes_max,
        in_flight_max: config.in_flight_max,
    };
    let refused = reply.error.is_some();
    send(&out_tx, FrameKind::HelloReply, 0, &reply);
    if refused {
        return finish(writer, out_tx).await;
    }
    tracing::debug!(%peer, client = %hello.client_name, "session started");
    frames
        .decoder_mut()
        .set_body_bytes_max(config.frame_body_bytes_max);

    // The client's own session id (0: none), kept across its reconnects:
    // with a request's number it identifies a write for exactly-once.
    let client_session = hello.session;
    let session = Arc::new(service.open_session(outbox.clone(), budget.clone(), client_session));
    let permits = Arc::new(Semaphore::new(config.in_flight_max as usize));
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            frame = frames.next() => frame,
        };
        let frame = match frame {
            None => break,
            Some(Err(error)) => {
                tracing::info!(%peer, %error, "closing a connection that sent an undecodable frame");
                goodbye(&out_tx, CkptError::new(error.code(), error.to_string()));
                break;
            }
            Some(Ok(frame)) => frame,
        };
        match frame.kind {
            FrameKind::Request => {}
            FrameKind::Goodbye => break,
            other => {
                goodbye(
                    &out_tx,
                    CkptError::new(
                        ErrorCode::InvalidBuffer,
                        format!("a client may not send {other:?} frames"),
                    ),
                );
                break;
            }
        }
        let request_id = frame.request_id;
        let received = Instant::now();
        // A request refused before it is looked at: too many in flight, or
        // undecodable.
        let admitted = match permits.clone().try_acquire_owned() {
            Err(_) => Err(CkptError::new(
                ErrorCode::NoResource,
                format!(
                    "more than {} requests in flight on this connection",
                    config.in_flight_max
                ),
            )),
            Ok(permit) => frame.decode::<Request>().map(|request| (permit, request)),
        };
        let (permit, request) = match admitted {
            Ok(admitted) => admitted,
            Err(error) => {
                // Answers made here wait for room too, so a client that
                // sends without reading stops being read.
                let Some(room) = reserve_or_stop(&budget, &shutdown).await else {
                    break;
                };
                answer(
                    &out_tx,
                    &budget,
                    request_id,
                    Response::Err(error),
                    room,
                    None,
                );
                continue;
            }
        };
        // A read that memory answers at once is answered here: no task, no
        // hand-off (answers may come in any order: docs/protocol.md).
        if let Some((response, room)) = service.answer_now(&session, &request) {
            answer(&out_tx, &budget, request_id, response, room, Some(permit));
            continue;
        }
        // A write on a single node goes to the store with its answer
        // attached: the store's thread queues the answer, no task waits.
        let request = match service.write_now(&session, request) {
            Ok(write) => {
                let (out, room_of) = (out_tx.clone(), budget.clone());
                let submitted = write.submit(move |response, room| {
                    answer(&out, &room_of, request_id, response, room, Some(permit));
                });
                if let Err(submission) = submitted {
                    // The writer's queue is full: this connection waits
                    // for room (on a blocking thread) before reading on.
                    let _ = tokio::task::spawn_blocking(move || submission.wait()).await;
                }
                continue;
            }
            Err(request) => request,
        };
        let (service, session, out_tx, budget) = (
            service.clone(),
            session.clone(),
            out_tx.clone(),
            budget.clone(),
        );
        tokio::spawn(async move {
            service.metrics().stages.spawn.observe_since(received);
            let (response, room) = service.handle(&session, request, request_id).await;
            answer(&out_tx, &budget, request_id, response, room, Some(permit));
        });
    }
    // Let every request in flight finish and be answered (the writer
    // releases a permit once the answer is written, or dropped with a
    // closed socket).
    let _ = permits.acquire_many(config.in_flight_max).await;
    service.close_session(&session).await;
    finish(writer, out_tx).await;
}

/// Room for one small answer made by the reader loop, or None when the
/// server shuts down first.
async fn reserve_or_stop(
    budget: &ReplyBudget,
    shutdown: &CancellationToken,
) -> Option<Reservation> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        room = budget.reserve(SMALL_REPLY_BYTES) => Some(room),
    }
}

/// Encodes a request's answer and queues it for the writer, holding its
/// reply room (grown to the encoded size if free) and in-flight slot (none
/// for a request refused before it got one) until it is written. Only the
/// encoded copy waits for the socket.
fn answer(
    out: &mpsc::UnboundedSender<Outgoing>,
    budget: &ReplyBudget,
    request_id: u64,
    response: Response,
    mut room: Reservation,
    in_flight: Option<OwnedSemaphorePermit>,
) {
    let encoded = Frame::new(FrameKind::Response, request_id, &response);
    drop(response);
    match encoded {
        Ok(frame) => {
            budget.top_up(&mut room, frame.body.len() as u64);
            let _ = out.send(Outgoing {
                frame,
                _reservation: Some(room),
                _in_flight: in_flight,
                queued: Some(Instant::now()),
            });
        }
        Err(error) => tracing::error!(%error, "encoding a response failed"),
    }
}

fn send<T: serde::Serialize>(
    out: &mpsc::UnboundedSender<Outgoing>,
    kind: FrameKind,
    request_id: u64,
    message: &T,
) {
    match Frame::new(kind, request_id, message) {
        Ok(frame) => {
            let _ = out.send(Outgoing {
                frame,
                _reservation: None,
                _in_flight: None,
                queued: None,
            });
        }
        Err(error) => tracing::error!(%error, "encoding a frame failed"),
    }
}

fn goodbye(out: &mpsc::UnboundedSender<Outgoing>, error: CkptError) {
    send(out, FrameKind::Goodbye, 0, &Goodbye { error });
}

async fn finish(writer: tokio::task::JoinHandle<()>, out_tx: mpsc::UnboundedSender<Outgoing>) {
    drop(out_tx);
    let _ = writer.await;
}

/// Writes replies (first) and notifications as they come, batching what is
/// ready into one flush; what a frame holds (its reply room, its in-flight
/// permit, its notification bytes) is released once the flush returns.
async fn write_frames(
    mut sink: FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>,
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
    mut notifications: mpsc::UnboundedReceiver<QueuedNotification>,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
) {
    let mut written: Vec<Outgoing> = Vec::new();
    let mut notes_written: u64 = 0;
    'serve: loop {
        tokio::select! {
            biased;
            frame = frames.recv() => match frame {
                Some(frame) => written.push(frame),
                None => break 'serve,
            },
            Some((note, bytes)) = notifications.recv() => {
                notes_written += bytes;
                match Frame::new(FrameKind::Notification, 0, &note) {
                    Ok(frame) => written.push(Outgoing { frame, _reservation: None, _in_flight: None, queued: None }),
                    Err(error) => tracing::error!(%error, "encoding a notification failed"),
                }
            }
        };
        // Batch whatever else is ready into one flush.
        while let Ok(frame) = frames.try_recv() {
            written.push(frame);
        }
        for _ in 0..NOTIFICATIONS_PER_FLUSH_MAX {
            let Ok((note, bytes)) = notifications.try_recv() else {
                break;
            };
            notes_written += bytes;
            match Frame::new(FrameKind::Notification, 0, &note) {
                Ok(frame) => written.push(Outgoing {
                    frame,
                    _reservation: None,
                    _in_flight: None,
                    queued: None,
                }),
                Err(error) => tracing::error!(%error, "encoding a notification failed"),
            }
        }
        // What the frames hold is kept until the flush returns; their
        // bytes move into the sink as they are fed.
        let mut held = Vec::with_capacity(written.len());
        let mut failed = false;
        for Outgoing {
            frame,
            _reservation,
            _in_flight,
            queued,
        } in written.drain(..)
        {
            held.push((_reservation, _in_flight, queued));
            if !failed && sink.feed(frame).await.is_err() {
                failed = true;
            }
        }
        if failed || sink.flush().await.is_err() {
            break 'serve;
        }
        for (_, _, queued) in &held {
            if let Some(queued) = queued {
                metrics.stages.out.observe_since(*queued);
            }
        }
        drop(held);
        if notes_written > 0 {
            outbox.written(std::mem::take(&mut notes_written));
        }
    }
    if sink.flush().await.is_ok() {
        let _ = sink.close().await;
    }
    // Whatever is left is never written: release it.
    drop(written);
    frames.close();
    while frames.recv().await.is_some() {}
    outbox.discard();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: u64) -> (Arc<ReplyBudget>, IntGauge) {
        let gauge = IntGauge::new("reply_bytes", "test").unwrap();
        (ReplyBudget::new(bytes, gauge.clone()), gauge)
    }

    #[test]
    fn try_reserve_takes_free_room_only_and_gives_it_back() {
        let (budget, gauge) = budget(4 * BUDGET_UNIT_BYTES);
        let first = budget.try_reserve(2500).expect("3 units of 4 are free");
        assert_eq!(gauge.get(), 3 * BUDGET_UNIT_BYTES as i64);
        assert!(budget.try_reserve(2 * BUDGET_UNIT_BYTES).is_none());
        let second = budget.try_reserve(1).expect("the last unit");
        assert!(budget.try_reserve(1).is_none());
        drop(first);
        assert_eq!(gauge.get(), BUDGET_UNIT_BYTES as i64);
        // More than the whole budget is capped at the whole budget.
        drop(second);
        let all = budget.try_reserve(u64::MAX).expect("capped at the budget");
        assert_eq!(gauge.get(), 4 * BUDGET_UNIT_BYTES as i64);
        drop(all);
        assert_eq!(gauge.get(), 0);
    }

    /// On a current-thread runtime a spawned task runs, and queues, at
    /// the first yield: no timing involved.
    #[tokio::test(flavor = "current_thread")]
    async fn try_reserve_never_overtakes_a_waiter() {
        let (budget, _gauge) = budget(4 * BUDGET_UNIT_BYTES);
        let held = budget.try_reserve(4 * BUDGET_UNIT_BYTES).unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(3 * BUDGET_UNIT_BYTES).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the waiter is queued");
        drop(held);
        // The freed room went to the waiter first (3 units): one is left,
        // even before the waiter runs again.
        assert!(budget.try_reserve(2 * BUDGET_UNIT_BYTES).is_none());
        let last = budget.try_reserve(1).expect("the unit the waiter left");
        let waited = waiter.await.unwrap();
        drop((waited, last));
        assert!(budget.try_reserve(4 * BUDGET_UNIT_BYTES).is_some());
    }
}
