//! Notifications: every durable record of a checkpoint with subscribers is
//! turned into a [`Change`] and pushed, in log order, to each subscriber's
//! session. A bounded history per checkpoint lets a subscriber that
//! reconnects resume after its last sequence number without gaps; when the
//! history no longer reaches back that far, it is told to re-read
//! ([`Notification::Resync`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ckpt_proto::wire::{Change, Handle, Notification};
use ckpt_proto::{CheckpointName, SectionId, WriteElement};
use ckpt_storage::{InstanceId, Record, RecordBody};
use tokio::sync::mpsc::UnboundedSender;

/// Where a session wants its notifications.
pub type Outbox = UnboundedSender<Notification>;

struct Subscriber {
    session: u64,
    handle: Handle,
    outbox: Outbox,
}

#[derive(Default)]
struct Feed {
    name: Option<CheckpointName>,
    /// Last sequence number seen for this instance.
    last_seq: u64,
    history: VecDeque<(u64, Change)>,
    subscribers: Vec<Subscriber>,
}

/// Who subscribes to what (ImmediateConsumptionRegister).
pub struct SubscribeRequest {
    /// The checkpoint instance.
    pub instance: InstanceId,
    /// Its name, reported in notifications.
    pub name: CheckpointName,
    /// Its sequence number as stored now.
    pub current_seq: u64,
    /// The subscribing session.
    pub session: u64,
    /// The session's handle on the checkpoint.
    pub handle: Handle,
    /// The last sequence number the subscriber saw, to resume after.
    pub resume_after: Option<u64>,
    /// Where the session's notifications go.
    pub outbox: Outbox,
}

/// The notification hub, shared by the commit listener and the sessions.
pub struct Hub {
    feeds: Mutex<HashMap<InstanceId, Feed>>,
    history_max: usize,
}

impl Hub {
    /// A hub keeping up to `history_max` changes per subscribed checkpoint.
    pub fn new(history_max: usize) -> Arc<Hub> {
        Arc::new(Hub {
            feeds: Mutex::new(HashMap::new()),
            history_max,
        })
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Feed>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called with every durable batch, in log order.
    pub fn on_commit(&self, records: &[Record]) {
        let mut feeds = self.feeds();
        if feeds.is_empty() {
            return;
        }
        for record in records {
            let Some(feed) = feeds.get_mut(&record.instance) else {
                continue;
            };
            let Some(change) = change_of(&record.body) else {
                continue;
            };
            feed.last_seq = record.seq.0;
            feed.history.push_back((record.seq.0, change.clone()));
            while feed.history.len() > self.history_max {
                feed.history.pop_front();
            }
            let name = feed.name.clone();
            feed.subscribers.retain(|s| {
                let Some(name) = name.clone() else {
                    return true;
                };
                let update = Notification::Update {
                    handle: s.handle,
                    name,
                    seq: record.seq.0,
                    change: change.clone(),
                };
                s.outbox.send(update).is_ok()
            });
        }
    }

    /// Subscribes a session's handle. `current_seq` is the checkpoint's
    /// sequence number as stored now. Returns the sequence number of the
    /// first update that will follow. With `resume_after`, the updates after
    /// it are sent first from the history, or a `Resync` if it no longer
    /// holds them.
    pub fn subscribe(&self, request: SubscribeRequest) -> u64 {
        let SubscribeRequest {
            instance,
            name,
            current_seq,
            session,
            handle,
            resume_after,
            outbox,
        } = request;
        let mut feeds = self.feeds();
        let feed = feeds.entry(instance).or_default();
        feed.name = Some(name.clone());
        feed.last_seq = feed.last_seq.max(current_seq);
        let next_seq = feed.last_seq + 1;
        if let Some(after) = resume_after {
            if after < feed.last_seq {
                let oldest = feed.history.front().map(|(seq, _)| *seq);
                if oldest.is_some_and(|oldest| oldest <= after + 1) {
                    for (seq, change) in feed.history.iter().filter(|(seq, _)| *seq > after) {
                        let update = Notification::Update {
                            handle,
                            name: name.clone(),
                            seq: *seq,
                            change: change.clone(),
                        };
                        let _ = outbox.send(update);
                    }
                } else {
                    let _ = outbox.send(Notification::Resync {
                        handle,
                        after_seq: after,
                        next_seq,
                    });
                }
            }
        }
        feed.subscribers
            .retain(|s| !(s.session == session && s.handle == handle));
        feed.subscribers.push(Subscriber {
            session,
            handle,
            outbox,
        });
        next_seq
    }

    /// Drops a handle's subscription (close).
    pub fn unsubscribe(&self, session: u64, handle: Handle) {
        for feed in self.feeds().values_mut() {
            feed.subscribers
                .retain(|s| !(s.session == session && s.handle == handle));
        }
    }

    /// Tells subscribers the checkpoint was deleted and forgets it once the
    /// instance is destroyed.
    pub fn forget(&self, instance: InstanceId) {
        self.feeds().remove(&instance);
    }
}

fn change_of(body: &RecordBody) -> Option<Change> {
    Some(match body {
        RecordBody::CheckpointCreate { .. }
        | RecordBody::CheckpointDestroy
        | RecordBody::GeneratedIdSet { .. } => return None,
        RecordBody::CheckpointUnlink => Change::Deleted,
        RecordBody::RetentionSet {
            retention_duration_ns,
        } => Change::RetentionSet {
            retention_duration_ns: *retention_duration_ns,
        },
        RecordBody::SectionCreate {
            section_id, data, ..
        } => Change::SectionCreated {
            section_id: section_id.clone(),
            data: data.clone(),
        },
        RecordBody::SectionDelete {
            section_id,
            expired,
        } => Change::SectionDeleted {
            section_id: section_id.clone(),
            expired: *expired,
        },
        RecordBody::SectionExpirationSet {
            section_id,
            expiration_time,
        } => Change::ExpirationSet {
            section_id: section_id.clone(),
            expiration_time: *expiration_time,
        },
        RecordBody::Write { elements } => Change::Written {
            elements: elements
                .iter()
                .map(|e| WriteElement {
                    section_id: e.section_id.clone(),
                    offset: e.offset,
                    data: e.data.clone(),
                })
                .collect(),
        },
        RecordBody::Overwrite { section_id, data } => Change::Overwritten {
            section_id: SectionId::new(section_id.as_bytes().to_vec()),
            data: data.clone(),
        },
    })
}
