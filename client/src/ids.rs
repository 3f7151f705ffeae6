//! Client-side ids that outlive a connection.
//!
//! Checkpoint handles, iterator handles and dump ids are numbers the server
//! hands out per connection. When the client reconnects, the server it
//! reaches knows none of them: the client reopens every handle, gets new
//! numbers, and keeps the old ones as its callers' ids. [`IdMap`] is that
//! translation, one per kind of id:
//!
//! - the id a caller sees is the server's id of the connection it was
//!   issued on (so on a connection that never dropped nothing changes), or,
//!   when that number is already taken by an older id, a fresh one from
//!   [`FRESH_IDS_FIRST`] up;
//! - an id whose object could not be carried over (iterators and dumps
//!   always, a handle whose reopen failed) stays known as lost, with the
//!   reason, until it is released (close / finalize), so a call on it fails
//!   with a clear message instead of reaching an unrelated object;
//! - an id the client never issued passes through unchanged, unless it is
//!   the server's current number for another caller's id (which only
//!   happens after a reconnect): then it is refused locally.

use std::collections::HashMap;

use ckpt_proto::wire::Request;

/// First id handed out when a server's number collides with an id already
/// in use. Far above any per-connection counter of the server.
pub(crate) const FRESH_IDS_FIRST: u64 = 1 << 48;

/// Which kind of connection-scoped id a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
    /// A checkpoint handle.
    Handle,
    /// A section iterator.
    Iterator,
    /// A dump (DumpBegin … DumpEnd).
    Dump,
}

/// The connection-scoped id `request` names, if any.
pub(crate) fn id_of(request: &Request) -> Option<(IdKind, u64)> {
    use Request as R;
    match request {
        R::Close { handle }
        | R::RetentionDurationSet { handle, .. }
        | R::ActiveReplicaSet { handle }
        | R::StatusGet { handle }
        | R::SectionCreate { handle, .. }
        | R::SectionDelete { handle, .. }
        | R::SectionExpirationTimeSet { handle, .. }
        | R::SectionOverwrite { handle, .. }
        | R::Write { handle, .. }
        | R::Read { handle, .. }
        | R::Synchronize { handle }
        | R::IterationInitialize { handle, .. }
        | R::ImmediateConsumptionRegister { handle, .. }
        | R::RestoreSection { handle, .. } => Some((IdKind::Handle, *handle)),
        R::IterationNext { iterator } | R::IterationFinalize { iterator } => {
            Some((IdKind::Iterator, *iterator))
        }
        R::DumpRead { dump, .. } | R::DumpEnd { dump } => Some((IdKind::Dump, *dump)),
        R::Open { .. }
        | R::Delete { .. }
        | R::List
        | R::Stat { .. }
        | R::Finalize
        | R::DumpBegin { .. }
        | R::Restore { .. }
        | R::ServerStatus => None,
    }
}

/// Whether `request` releases the id it names (so a lost id can be
/// forgotten: the object is gone already).
pub(crate) fn releases_id(request: &Request) -> bool {
    matches!(
        request,
        Request::Close { .. } | Request::IterationFinalize { .. } | Request::DumpEnd { .. }
    )
}

/// `request` with the id it names replaced by `id`.
pub(crate) fn with_id(request: &Request, id: u64) -> Request {
    let mut request = request.clone();
    use Request as R;
    match &mut request {
        R::Close { handle }
        | R::RetentionDurationSet { handle, .. }
        | R::ActiveReplicaSet { handle }
        | R::StatusGet { handle }
        | R::SectionCreate { handle, .. }
        | R::SectionDelete { handle, .. }
        | R::SectionExpirationTimeSet { handle, .. }
        | R::SectionOverwrite { handle, .. }
        | R::Write { handle, .. }
        | R::Read { handle, .. }
        | R::Synchronize { handle }
        | R::IterationInitialize { handle, .. }
        | R::ImmediateConsumptionRegister { handle, .. }
        | R::RestoreSection { handle, .. } => *handle = id,
        R::IterationNext { iterator } | R::IterationFinalize { iterator } => *iterator = id,
        R::DumpRead { dump, .. } | R::DumpEnd { dump } => *dump = id,
        R::Open { .. }
        | R::Delete { .. }
        | R::List
        | R::Stat { .. }
        | R::Finalize
        | R::DumpBegin { .. }
        | R::Restore { .. }
        | R::ServerStatus => {}
    }
    request
}

/// Why a caller's id cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdError {
    /// Its object was lost with an earlier connection; the message says how.
    Lost(String),
    /// Never issued by this client (or released), and its number now names
    /// another caller's object on the server.
    Foreign(String),
}

impl IdError {
    /// The message.
    pub(crate) fn message(&self) -> &str {
        match self {
            IdError::Lost(message) | IdError::Foreign(message) => message,
        }
    }
}

/// Where a caller's id points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// The server's id on the current connection.
    Live(u64),
    /// Gone with an earlier connection; why.
    Lost(String),
}

/// Caller ids ↔ the current connection's server ids, for one kind of id.
#[derive(Debug)]
pub(crate) struct IdMap {
    what: &'static str,
    to_server: HashMap<u64, Slot>,
    to_caller: HashMap<u64, u64>,
    next_fresh: u64,
}

impl IdMap {
    /// An empty map; `what` names the ids in messages ("handle").
    pub(crate) fn new(what: &'static str) -> IdMap {
        IdMap {
            what,
            to_server: HashMap::new(),
            to_caller: HashMap::new(),
            next_fresh: FRESH_IDS_FIRST,
        }
    }

    /// The server issued `server_id` on the current connection: the caller's
    /// id for it.
    pub(crate) fn register(&mut self, server_id: u64) -> u64 {
        if let Some(existing) = self.to_caller.get(&server_id) {
            // The server reused a number it had issued: the old object is
            // gone on its side, so the old caller id now means the new one.
            return *existing;
        }
        let caller_id = if self.to_server.contains_key(&server_id) {
            let mut fresh = self.next_fresh;
            while self.to_server.contains_key(&fresh) {
                fresh = fresh.wrapping_add(1).max(FRESH_IDS_FIRST);
            }
            self.next_fresh = fresh.wrapping_add(1).max(FRESH_IDS_FIRST);
            fresh
        } else {
            server_id
        };
        self.to_server.insert(caller_id, Slot::Live(server_id));
        self.to_caller.insert(server_id, caller_id);
        caller_id
    }

    /// Forgets a caller id (its object was released).
    pub(crate) fn remove(&mut self, caller_id: u64) {
        if let Some(Slot::Live(server_id)) = self.to_server.remove(&caller_id) {
            self.to_caller.remove(&server_id);
        }
    }

    /// The server id to send for `caller_id`.
    ///
    /// # Errors
    /// Why the id cannot be used: its object was lost with a connection, or
    /// it is an id this client never issued that now names another
    /// caller's object.
    pub(crate) fn to_server(&self, caller_id: u64) -> Result<u64, IdError> {
        match self.to_server.get(&caller_id) {
            Some(Slot::Live(server_id)) => Ok(*server_id),
            Some(Slot::Lost(why)) => Err(IdError::Lost(why.clone())),
            None => match self.to_caller.get(&caller_id) {
                Some(other) if *other != caller_id => Err(IdError::Foreign(format!(
                    "{} {caller_id} is not open on this client",
                    self.what
                ))),
                _ => Ok(caller_id),
            },
        }
    }

    /// The caller's id for the server's `server_id` (unknown ones unchanged).
    pub(crate) fn to_caller(&self, server_id: u64) -> u64 {
        self.to_caller.get(&server_id).copied().unwrap_or(server_id)
    }

    /// Every caller id still live, with its server id.
    pub(crate) fn live(&self) -> Vec<(u64, u64)> {
        let mut live: Vec<(u64, u64)> = self
            .to_server
            .iter()
            .filter_map(|(caller, slot)| match slot {
                Slot::Live(server) => Some((*caller, *server)),
                Slot::Lost(_) => None,
            })
            .collect();
        live.sort_unstable();
        live
    }

    /// A new connection: `rebound` gives the new server id of the caller ids
    /// carried over; every other live id is lost, `why` saying so.
    pub(crate) fn rebind(&mut self, rebound: &HashMap<u64, u64>, why: &dyn Fn(u64) -> String) {
        self.to_caller.clear();
        for (caller, slot) in self.to_server.iter_mut() {
            if !matches!(slot, Slot::Live(_)) {
                continue;
            }
            match rebound.get(caller) {
                Some(server) => {
                    *slot = Slot::Live(*server);
                    self.to_caller.insert(*server, *caller);
                }
                None => *slot = Slot::Lost(why(*caller)),
            }
        }
    }

    /// Marks `caller_id` lost (its reopen failed).
    pub(crate) fn lose(&mut self, caller_id: u64, why: String) {
        if let Some(slot) = self.to_server.get_mut(&caller_id) {
            if let Slot::Live(server) = slot {
                self.to_caller.remove(server);
            }
            *slot = Slot::Lost(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_servers_until_a_reconnect_remaps_them() {
        let mut map = IdMap::new("handle");
        assert_eq!(map.register(1), 1);
        assert_eq!(map.register(2), 2);
        assert_eq!(map.to_server(1), Ok(1));
        // Never issued: passes through for the server to refuse.
        assert_eq!(map.to_server(77), Ok(77));

        // Reconnect: 1 reopened as 2, 2 reopened as 1.
        let rebound = HashMap::from([(1, 2), (2, 1)]);
        map.rebind(&rebound, &|id| format!("lost {id}"));
        assert_eq!(map.to_server(1), Ok(2));
        assert_eq!(map.to_server(2), Ok(1));
        assert_eq!(map.to_caller(2), 1);
        assert_eq!(map.to_caller(1), 2);

        // A new server id that collides with a caller id gets a fresh one.
        let fresh = map.register(3);
        assert_eq!(fresh, 3);
        map.remove(1);
        // Caller id 1 is released, but server number 1 belongs to caller
        // 2: a stray 1 is refused rather than sent to caller 2's object.
        assert_eq!(
            map.to_server(1),
            Err(IdError::Foreign(
                "handle 1 is not open on this client".into()
            ))
        );
        // Server id 2 issued again while caller id 2 is taken: a fresh id.
        assert_eq!(map.register(2), FRESH_IDS_FIRST);
    }

    #[test]
    fn collisions_get_fresh_ids_and_lost_ids_say_why() {
        let mut map = IdMap::new("iterator");
        assert_eq!(map.register(1), 1);
        map.rebind(&HashMap::new(), &|id| format!("iterator {id} was lost"));
        assert_eq!(
            map.to_server(1),
            Err(IdError::Lost("iterator 1 was lost".into()))
        );
        // The new connection issues 1 again: the caller gets a fresh id.
        let fresh = map.register(1);
        assert_eq!(fresh, FRESH_IDS_FIRST);
        assert_eq!(map.to_server(fresh), Ok(1));
        assert_eq!(map.to_caller(1), fresh);
        assert_eq!(
            map.to_server(1),
            Err(IdError::Lost("iterator 1 was lost".into()))
        );
        assert_eq!(map.live(), vec![(fresh, 1)]);
        map.remove(1);
        // Released; but server id 1 now names the fresh id's iterator, so a
        // stray 1 is refused rather than sent to it.
        assert_eq!(
            map.to_server(1),
            Err(IdError::Foreign(
                "iterator 1 is not open on this client".into()
            ))
        );
    }

    #[test]
    fn requests_have_their_ids_replaced() {
        let request = Request::Write {
            handle: 4,
            elements: Vec::new(),
        };
        assert_eq!(id_of(&request), Some((IdKind::Handle, 4)));
        assert_eq!(
            with_id(&request, 9),
            Request::Write {
                handle: 9,
                elements: Vec::new()
            }
        );
        let next = Request::IterationNext { iterator: 3 };
        assert_eq!(id_of(&next), Some((IdKind::Iterator, 3)));
        assert_eq!(with_id(&next, 5), Request::IterationNext { iterator: 5 });
        assert_eq!(
            id_of(&Request::DumpEnd { dump: 2 }),
            Some((IdKind::Dump, 2))
        );
        assert_eq!(id_of(&Request::List), None);
        assert!(releases_id(&Request::Close { handle: 1 }));
        assert!(!releases_id(&next));
    }
}
