//! [`Subscription`]: the updates of one checkpoint handle as a
//! [`futures::Stream`] (clCkptImmediateConsumptionRegister).
//!
//! The stream ends when the handle is closed, the connection ends, a newer
//! subscription on the same handle replaces this one, or this subscriber
//! falls [`crate::NOTIFICATIONS_QUEUED_MAX`] notifications behind
//! ([`Subscription::overflowed`]). In every case
//! [`Subscription::resume_point`] is what to pass as `resume_after` to a new
//! subscription (on this or a new connection) to continue without a gap,
//! as long as the server's log still holds the updates; if it does not, the
//! new stream starts with a [`Notification::Resync`].

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ckpt_proto::wire::{Handle, Notification};
use tokio::sync::mpsc;

use crate::connection::{Client, SubscriptionReceiver};

/// Notifications of one checkpoint handle, in log order.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    handle: Handle,
    id: u64,
    notifications: mpsc::Receiver<Notification>,
    overflowed: Arc<AtomicBool>,
    next_seq: u64,
    last_seq: Option<u64>,
}

impl Subscription {
    pub(crate) fn new(
        client: Client,
        handle: Handle,
        receiver: SubscriptionReceiver,
        next_seq: u64,
    ) -> Self {
        Subscription {
            client,
            handle,
            id: receiver.id,
            notifications: receiver.rx,
            overflowed: receiver.overflowed,
            next_seq,
            last_seq: None,
        }
    }

    /// The checkpoint handle this subscription follows.
    pub fn handle(&self) -> Handle {
        self.handle
    }

    /// The sequence number of the first update this subscription delivers
    /// (from the server's `Registered` reply).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence number of the last update delivered so far (after a
    /// `Resync`, the one just before its `next_seq`).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// What to pass as `resume_after` to continue where this stream stopped.
    pub fn resume_point(&self) -> Option<u64> {
        self.last_seq.or_else(|| self.next_seq.checked_sub(1))
    }

    /// Whether the stream ended because this subscriber fell too far behind.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

impl futures::Stream for Subscription {
    type Item = Notification;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Notification>> {
        let polled = self.notifications.poll_recv(cx);
        if let Poll::Ready(Some(notification)) = &polled {
            self.last_seq = match notification {
                Notification::Update { seq, .. } => Some(*seq),
                Notification::Resync { next_seq, .. } => next_seq.checked_sub(1),
            };
        }
        polled
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.client.remove_subscription(self.handle, self.id);
    }
}
