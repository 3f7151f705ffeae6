//! [`Checkpoint`]: an open checkpoint handle (`ClCkptHdlT`), and
//! [`SectionIterator`] (`clCkptSectionIteration*`).
//!
//! Each method is one [`Request`] variant, named after it. A handle lives on
//! the server until [`Checkpoint::close`], [`Client::finalize`] or the end of
//! the connection; dropping a `Checkpoint` without closing it keeps the
//! handle open on the server until then (and, with it, the checkpoint's
//! retention timer stopped).

use ckpt_proto::wire::{Handle, IteratorHandle, Reply, Request};
use ckpt_proto::{
    CheckpointName, CheckpointStatus, ErrorCode, ReadElement, SectionCreationAttributes,
    SectionDescriptor, SectionId, SectionsChosen, WriteElement,
};

use crate::connection::{expect_done, Client};
use crate::error::ClientError;
use crate::subscription::Subscription;

/// An open checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    client: Client,
    handle: Handle,
    name: CheckpointName,
    created: bool,
}

impl Checkpoint {
    pub(crate) fn new(client: Client, handle: Handle, name: CheckpointName, created: bool) -> Self {
        Checkpoint {
            client,
            handle,
            name,
            created,
        }
    }

    /// A second value for the same server handle, for the dispatch layer's
    /// background tasks and for callers that share one handle between
    /// threads (the C library closes a shared handle through an alias).
    /// Closing either closes the handle.
    pub fn alias(&self) -> Checkpoint {
        Checkpoint {
            client: self.client.clone(),
            handle: self.handle,
            name: self.name.clone(),
            created: self.created,
        }
    }

    /// The server's handle.
    pub fn handle(&self) -> Handle {
        self.handle
    }

    /// The checkpoint's name.
    pub fn name(&self) -> &CheckpointName {
        &self.name
    }

    /// Whether the open created the checkpoint (false: it existed).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The connection this handle lives on.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Closes the handle (clCkptCheckpointClose). After the last close
    /// anywhere the retention timer starts. Its subscription ends and, in a
    /// [`crate::CkptService`], its callbacks not yet dispatched are dropped
    /// (a SynchronizeAsync still running never calls back) — before the
    /// request is sent, whatever its outcome.
    ///
    /// # Errors
    /// `INVALID_HANDLE` if the server no longer knows the handle; connection errors.
    pub async fn close(self) -> Result<(), ClientError> {
        self.client.handle_closing(self.handle);
        let result = self
            .client
            .request(Request::Close {
                handle: self.handle,
            })
            .await;
        expect_done("Close", result?)
    }

    /// Sets how long the checkpoint is kept once nobody has it open, in ns;
    /// [`ckpt_proto::TIME_END`] keeps it forever
    /// (clCkptCheckpointRetentionDurationSet).
    ///
    /// # Errors
    /// `INVALID_PARAMETER` for a negative duration; `BAD_OPERATION` once the
    /// checkpoint was deleted; connection errors.
    pub async fn retention_duration_set(
        &self,
        retention_duration_ns: i64,
    ) -> Result<(), ClientError> {
        let request = Request::RetentionDurationSet {
            handle: self.handle,
            retention_duration_ns,
        };
        expect_done("RetentionDurationSet", self.client.request(request).await?)
    }

    /// Makes the caller's node the active replica of a collocated checkpoint
    /// (clCkptActiveReplicaSet).
    ///
    /// # Errors
    /// `BAD_OPERATION` for a checkpoint that is not collocated; connection errors.
    pub async fn active_replica_set(&self) -> Result<(), ClientError> {
        expect_done(
            "ActiveReplicaSet",
            self.client
                .request(Request::ActiveReplicaSet {
                    handle: self.handle,
                })
                .await?,
        )
    }

    /// Attributes, number of sections and bytes used (clCkptCheckpointStatusGet).
    ///
    /// # Errors
    /// Connection errors; a permission error without READ.
    pub async fn status(&self) -> Result<CheckpointStatus, ClientError> {
        match self
            .client
            .request(Request::StatusGet {
                handle: self.handle,
            })
            .await?
        {
            Reply::Status(status) => Ok(status),
            other => Err(ClientError::unexpected_reply("StatusGet", &other)),
        }
    }

    /// Creates a section holding `initial_data` (clCkptSectionCreate); with
    /// `attributes.section_id == None` the server generates the id. Returns
    /// the section's id.
    ///
    /// # Errors
    /// `ALREADY_EXIST` for a duplicate id, and for any section of a
    /// checkpoint with maxSections == 1; `NO_SPACE` beyond maxSections or
    /// checkpointSize; `INVALID_PARAMETER` for an id over maxSectionIdSize,
    /// data over maxSectionSize or an expiration in the past.
    pub async fn section_create(
        &self,
        attributes: SectionCreationAttributes,
        initial_data: Vec<u8>,
    ) -> Result<SectionId, ClientError> {
        let request = Request::SectionCreate {
            handle: self.handle,
            attributes,
            initial_data,
        };
        match self.client.request(request).await? {
            Reply::SectionCreated { section_id } => Ok(section_id),
            other => Err(ClientError::unexpected_reply("SectionCreate", &other)),
        }
    }

    /// Deletes a section (clCkptSectionDelete).
    ///
    /// # Errors
    /// `NOT_EXIST` for a missing section; `INVALID_PARAMETER` for the default section.
    pub async fn section_delete(&self, section_id: &SectionId) -> Result<(), ClientError> {
        let request = Request::SectionDelete {
            handle: self.handle,
            section_id: section_id.clone(),
        };
        expect_done("SectionDelete", self.client.request(request).await?)
    }

    /// Sets a section's absolute expiration time in ns since the epoch
    /// (clCkptSectionExpirationTimeSet).
    ///
    /// # Errors
    /// `NOT_EXIST`; `INVALID_PARAMETER` for a past time or the default section.
    pub async fn section_expiration_time_set(
        &self,
        section_id: &SectionId,
        expiration_time: i64,
    ) -> Result<(), ClientError> {
        let request = Request::SectionExpirationTimeSet {
            handle: self.handle,
            section_id: section_id.clone(),
            expiration_time,
        };
        expect_done(
            "SectionExpirationTimeSet",
            self.client.request(request).await?,
        )
    }

    /// Replaces a section's data and size (clCkptSectionOverwrite). Durable
    /// as the checkpoint's update mode promises when this returns.
    ///
    /// # Errors
    /// `NOT_EXIST`; `INVALID_PARAMETER` over maxSectionSize; `NO_SPACE` over checkpointSize.
    pub async fn section_overwrite(
        &self,
        section_id: &SectionId,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let request = Request::SectionOverwrite {
            handle: self.handle,
            section_id: section_id.clone(),
            data,
        };
        expect_done("SectionOverwrite", self.client.request(request).await?)
    }

    /// Writes every element atomically: all apply or none does
    /// (clCkptCheckpointWrite).
    ///
    /// # Errors
    /// The first failing element's error, with its position in
    /// [`ClientError::index`].
    pub async fn write(&self, elements: Vec<WriteElement>) -> Result<(), ClientError> {
        expect_done(
            "Write",
            self.client
                .request(Request::Write {
                    handle: self.handle,
                    elements,
                })
                .await?,
        )
    }

    /// Reads each element; returns the bytes actually read for each, in order
    /// (clCkptCheckpointRead). An offset at or past the section's end reads
    /// nothing.
    ///
    /// # Errors
    /// The first failing element's error, with its position in [`ClientError::index`].
    pub async fn read(&self, elements: Vec<ReadElement>) -> Result<Vec<Vec<u8>>, ClientError> {
        match self
            .client
            .request(Request::Read {
                handle: self.handle,
                elements,
            })
            .await?
        {
            Reply::Data(data) => Ok(data),
            other => Err(ClientError::unexpected_reply("Read", &other)),
        }
    }

    /// Returns when every replica has every update made so far
    /// (clCkptCheckpointSynchronize).
    ///
    /// # Errors
    /// `BAD_OPERATION` on a WR_ALL_REPLICAS checkpoint; a permission error
    /// without WRITE; `TRY_AGAIN` when too few replicas are in sync;
    /// connection errors.
    pub async fn synchronize(&self) -> Result<(), ClientError> {
        expect_done(
            "Synchronize",
            self.client
                .request(Request::Synchronize {
                    handle: self.handle,
                })
                .await?,
        )
    }

    /// Starts an iteration over the sections `chosen` selects relative to
    /// `expiration_time` (clCkptSectionIterationInitialize). The set of ids is
    /// fixed now; sections deleted meanwhile are skipped.
    ///
    /// # Errors
    /// Connection errors; a permission error without READ.
    pub async fn iterate(
        &self,
        chosen: SectionsChosen,
        expiration_time: i64,
    ) -> Result<SectionIterator, ClientError> {
        let request = Request::IterationInitialize {
            handle: self.handle,
            sections_chosen: chosen as u32,
            expiration_time,
        };
        match self.client.request(request).await? {
            Reply::Iterator { iterator } => Ok(SectionIterator {
                client: self.client.clone(),
                iterator,
            }),
            other => Err(ClientError::unexpected_reply("IterationInitialize", &other)),
        }
    }

    /// Subscribes to every committed update of the checkpoint, in log order
    /// (clCkptImmediateConsumptionRegister). `resume_after` is the last
    /// sequence number seen by an earlier subscription, to continue without
    /// a gap; `None` starts with the next update. One subscription per
    /// handle: a second one replaces the first, whose stream then ends.
    ///
    /// # Errors
    /// Connection errors; a permission error without READ.
    pub async fn subscribe(&self, resume_after: Option<u64>) -> Result<Subscription, ClientError> {
        // Registered before the request goes out, so notifications pushed
        // right behind the answer already have somewhere to go.
        let receiver = self.client.add_subscription(self.handle);
        let request = Request::ImmediateConsumptionRegister {
            handle: self.handle,
            resume_after,
        };
        match self.client.request(request).await {
            Ok(Reply::Registered { next_seq }) => Ok(Subscription::new(
                self.client.clone(),
                self.handle,
                receiver,
                next_seq,
            )),
            Ok(other) => {
                self.client.remove_subscription(self.handle, receiver.id);
                Err(ClientError::unexpected_reply(
                    "ImmediateConsumptionRegister",
                    &other,
                ))
            }
            Err(error) => {
                self.client.remove_subscription(self.handle, receiver.id);
                Err(error)
            }
        }
    }
}

/// An iteration over sections (`ClCkptSecItrHdlT`).
#[derive(Debug)]
pub struct SectionIterator {
    client: Client,
    iterator: IteratorHandle,
}

impl SectionIterator {
    /// The server's iterator handle.
    pub fn handle(&self) -> IteratorHandle {
        self.iterator
    }

    /// The next section, or `None` at the end (the server's
    /// `CL_CKPT_ERR_NO_SECTIONS`) (clCkptSectionIterationNext).
    ///
    /// # Errors
    /// Connection errors; `INVALID_HANDLE` for an iterator the server dropped.
    pub async fn next(&mut self) -> Result<Option<SectionDescriptor>, ClientError> {
        match self
            .client
            .request(Request::IterationNext {
                iterator: self.iterator,
            })
            .await
        {
            Ok(Reply::Section(descriptor)) => Ok(Some(descriptor)),
            Ok(other) => Err(ClientError::unexpected_reply("IterationNext", &other)),
            Err(error)
                if matches!(
                    error.code,
                    ErrorCode::NoSections | ErrorCode::CommonNoSections
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Frees the iterator on the server (clCkptSectionIterationFinalize).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn finalize(self) -> Result<(), ClientError> {
        expect_done(
            "IterationFinalize",
            self.client
                .request(Request::IterationFinalize {
                    iterator: self.iterator,
                })
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use ckpt_proto::wire::{Reply, Request};
    use ckpt_proto::{
        CheckpointName, CkptError, ErrorCode, OpenFlags, ReadElement, SectionDescriptor, SectionId,
        SectionState, SectionsChosen, WriteElement, TIME_END,
    };

    use crate::testing::{hello_reply, FakeServer};
    use crate::Client;

    fn descriptor(id: &str) -> SectionDescriptor {
        SectionDescriptor {
            section_id: SectionId::new(id),
            expiration_time: TIME_END,
            section_size: 3,
            state: SectionState::Valid,
            last_update: 1,
        }
    }

    #[tokio::test]
    async fn methods_send_their_request_and_decode_their_reply() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            let (id, request) = conn.recv_request().await;
            assert!(
                matches!(request, Request::Open { flags, .. } if flags == OpenFlags::READ | OpenFlags::WRITE)
            );
            conn.respond(
                id,
                Ok(Reply::Opened {
                    handle: 42,
                    created: false,
                }),
            )
            .await;

            let (id, request) = conn.recv_request().await;
            let Request::Write {
                handle: 42,
                elements,
            } = request
            else {
                panic!("{request:?}")
            };
            assert_eq!(elements.len(), 2);
            conn.respond(
                id,
                Err(CkptError::new(ErrorCode::NoSpace, "too big").at_index(1)),
            )
            .await;

            let (id, request) = conn.recv_request().await;
            assert!(matches!(request, Request::Read { handle: 42, .. }));
            conn.respond(id, Ok(Reply::Data(vec![b"abc".to_vec()])))
                .await;

            let (id, request) = conn.recv_request().await;
            assert_eq!(
                request,
                Request::IterationInitialize {
                    handle: 42,
                    sections_chosen: 5,
                    expiration_time: 0
                }
            );
            conn.respond(id, Ok(Reply::Iterator { iterator: 9 })).await;
            for answer in [
                Ok(Reply::Section(descriptor("s1"))),
                Err(CkptError::new(ErrorCode::NoSections, "end")),
            ] {
                let (id, request) = conn.recv_request().await;
                assert_eq!(request, Request::IterationNext { iterator: 9 });
                conn.respond(id, answer).await;
            }
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::IterationFinalize { iterator: 9 });
            conn.respond(id, Ok(Reply::Done)).await;

            // A reply of the wrong kind is a protocol error, not a panic.
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::StatusGet { handle: 42 });
            conn.respond(id, Ok(Reply::Done)).await;

            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::Close { handle: 42 });
            conn.respond(id, Ok(Reply::Done)).await;
            conn
        });
        let client = Client::connect(&addr).await.unwrap();
        let name = CheckpointName::new("c").unwrap();
        let checkpoint = client
            .open(&name, None, OpenFlags::READ | OpenFlags::WRITE)
            .await
            .unwrap();
        assert_eq!((checkpoint.handle(), checkpoint.created()), (42, false));
        assert_eq!(checkpoint.name(), &name);

        let element = |offset| WriteElement {
            section_id: SectionId::new("s1"),
            offset,
            data: vec![1],
        };
        let error = checkpoint
            .write(vec![element(0), element(1)])
            .await
            .unwrap_err();
        assert_eq!((error.code, error.index), (ErrorCode::NoSpace, Some(1)));

        let read = ReadElement {
            section_id: SectionId::new("s1"),
            offset: 0,
            size: None,
        };
        assert_eq!(
            checkpoint.read(vec![read]).await.unwrap(),
            vec![b"abc".to_vec()]
        );

        let mut iterator = checkpoint.iterate(SectionsChosen::Any, 0).await.unwrap();
        assert_eq!(iterator.next().await.unwrap(), Some(descriptor("s1")));
        assert_eq!(iterator.next().await.unwrap(), None);
        iterator.finalize().await.unwrap();

        let error = checkpoint.status().await.unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidBuffer);
        assert!(error.message.contains("StatusGet"), "{error}");

        checkpoint.close().await.unwrap();
        drop(script.await.unwrap());
    }
}
