//! One client connection: the version handshake, then pipelined requests
//! (each served on its own task, answered by request id), notifications
//! pushed as they come, and a clean close.
//!
//! Only a frame that cannot be decoded — bad magic, protocol version or
//! checksum, an oversize length, a kind a client may not send — ends the
//! connection, after a `Goodbye` that says why. A request whose body does
//! not decode, or that cannot be served, gets an error response.

use std::sync::Arc;
use std::time::Duration;

use ckpt_proto::wire::{
    ApiVersion, Frame, FrameCodec, FrameKind, Goodbye, Hello, HelloReply, Notification, Request,
    Response,
};
use ckpt_proto::{CkptError, ErrorCode};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::service::Service;

/// How long a client has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until the peer leaves, sends garbage, or the
/// server shuts down (then in-flight requests are finished first).
pub async fn serve(
    service: Arc<Service>,
    stream: TcpStream,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec::new(config.frame_body_bytes_max));
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Frame>();
    let (note_tx, note_rx) = mpsc::unbounded_channel::<Notification>();
    let writer = tokio::spawn(write_frames(
        FramedWrite::new(write, FrameCodec::new(u32::MAX)),
        out_rx,
        note_rx,
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

    let session = Arc::new(service.open_session(note_tx));
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let error = CkptError::new(
                ErrorCode::NoResource,
                format!(
                    "more than {} requests in flight on this connection",
                    config.in_flight_max
                ),
            );
            send(
                &out_tx,
                FrameKind::Response,
                request_id,
                &Response::Err(error),
            );
            continue;
        };
        let request = match frame.decode::<Request>() {
            Ok(request) => request,
            Err(error) => {
                send(
                    &out_tx,
                    FrameKind::Response,
                    request_id,
                    &Response::Err(error),
                );
                continue;
            }
        };
        let (service, session, out_tx) = (service.clone(), session.clone(), out_tx.clone());
        tokio::spawn(async move {
            let response = service.handle(&session, request).await;
            send(&out_tx, FrameKind::Response, request_id, &response);
            drop(permit);
        });
    }
    // Let every request in flight finish and be answered.
    let _ = permits.acquire_many(config.in_flight_max).await;
    service.close_session(&session).await;
    finish(writer, out_tx).await;
}

fn send<T: serde::Serialize>(
    out: &mpsc::UnboundedSender<Frame>,
    kind: FrameKind,
    request_id: u64,
    message: &T,
) {
    match Frame::new(kind, request_id, message) {
        Ok(frame) => {
            let _ = out.send(frame);
        }
        Err(error) => tracing::error!(%error, "encoding a frame failed"),
    }
}

fn goodbye(out: &mpsc::UnboundedSender<Frame>, error: CkptError) {
    send(out, FrameKind::Goodbye, 0, &Goodbye { error });
}

async fn finish(writer: tokio::task::JoinHandle<()>, out_tx: mpsc::UnboundedSender<Frame>) {
    drop(out_tx);
    let _ = writer.await;
}

async fn write_frames(
    mut sink: FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>,
    mut frames: mpsc::UnboundedReceiver<Frame>,
    mut notifications: mpsc::UnboundedReceiver<Notification>,
) {
    loop {
        let frame = tokio::select! {
            biased;
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
            Some(note) = notifications.recv() => match Frame::new(FrameKind::Notification, 0, &note) {
                Ok(frame) => frame,
                Err(_) => continue,
            },
        };
        // Batch whatever else is ready into one flush.
        if sink.feed(frame).await.is_err() {
            return;
        }
        while let Ok(frame) = frames.try_recv() {
            if sink.feed(frame).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.flush().await;
    let _ = sink.close().await;
}
