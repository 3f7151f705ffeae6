//! A scripted fake server for the unit tests: it speaks the real
//! [`FrameCodec`], and each test says frame by frame what it answers.

use std::time::Duration;

use ckpt_proto::wire::{
    Frame, FrameCodec, FrameKind, Goodbye, Hello, HelloReply, Notification, Request, Response,
    API_VERSION, FRAME_BODY_BYTES_MAX,
};
use ckpt_proto::CkptError;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// A successful `HelloReply` with `in_flight_max`.
pub(crate) fn hello_reply(in_flight_max: u32) -> HelloReply {
    HelloReply {
        error: None,
        version: API_VERSION,
        frame_body_bytes_max: FRAME_BODY_BYTES_MAX,
        in_flight_max,
    }
}

/// A listener on a free loopback port.
pub(crate) struct FakeServer {
    listener: TcpListener,
}

impl FakeServer {
    pub(crate) async fn start() -> FakeServer {
        FakeServer {
            listener: TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback"),
        }
    }

    pub(crate) fn addr(&self) -> String {
        self.listener.local_addr().expect("local addr").to_string()
    }

    /// Accepts one connection and answers its `Hello` with `reply`.
    pub(crate) async fn accept(&self, reply: HelloReply) -> FakeConnection {
        self.accept_raw(reply).await.1
    }

    /// As [`FakeServer::accept`], also returning the client's `Hello`.
    pub(crate) async fn accept_raw(&self, reply: HelloReply) -> (Hello, FakeConnection) {
        let (socket, _) = self.listener.accept().await.expect("accept");
        let mut conn = FakeConnection {
            frames: Framed::new(socket, FrameCodec::default()),
        };
        let frame = conn.next_frame().await.expect("a Hello frame");
        assert_eq!(frame.kind, FrameKind::Hello);
        let hello: Hello = frame.decode().expect("a valid Hello");
        conn.send(Frame::new(FrameKind::HelloReply, frame.request_id, &reply).expect("encode"))
            .await;
        (hello, conn)
    }
}

/// One accepted connection.
pub(crate) struct FakeConnection {
    frames: Framed<TcpStream, FrameCodec>,
}

impl FakeConnection {
    async fn next_frame(&mut self) -> Option<Frame> {
        match tokio::time::timeout(Duration::from_secs(10), self.frames.next()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(e))) => panic!("fake server: bad frame from the client: {e}"),
            Ok(None) => None,
            Err(_) => panic!("fake server: the client sent nothing for 10 s"),
        }
    }

    async fn send(&mut self, frame: Frame) {
        self.frames.send(frame).await.expect("fake server: send");
    }

    /// The next request, which must come.
    pub(crate) async fn recv_request(&mut self) -> (u64, Request) {
        let frame = self
            .next_frame()
            .await
            .expect("fake server: connection closed, wanted a request");
        assert_eq!(frame.kind, FrameKind::Request);
        assert_ne!(frame.request_id, 0, "request id 0 is reserved for pushes");
        (frame.request_id, frame.decode().expect("a valid Request"))
    }

    /// The next request if one comes within `wait`.
    pub(crate) async fn try_recv_request(&mut self, wait: Duration) -> Option<(u64, Request)> {
        let frame = tokio::time::timeout(wait, self.frames.next())
            .await
            .ok()??
            .expect("a valid frame");
        assert_eq!(frame.kind, FrameKind::Request);
        Some((frame.request_id, frame.decode().expect("a valid Request")))
    }

    /// The next frame, which must be a `Goodbye`.
    pub(crate) async fn recv_goodbye(&mut self) -> Goodbye {
        let frame = self
            .next_frame()
            .await
            .expect("fake server: connection closed, wanted a Goodbye");
        assert_eq!(frame.kind, FrameKind::Goodbye);
        frame.decode().expect("a valid Goodbye")
    }

    /// Whether the client closed its side.
    pub(crate) async fn at_eof(&mut self) -> bool {
        self.next_frame().await.is_none()
    }

    pub(crate) async fn respond(&mut self, request_id: u64, response: Response) {
        self.send(Frame::new(FrameKind::Response, request_id, &response).expect("encode"))
            .await;
    }

    pub(crate) async fn notify(&mut self, notification: Notification) {
        self.send(Frame::new(FrameKind::Notification, 0, &notification).expect("encode"))
            .await;
    }

    pub(crate) async fn goodbye(&mut self, error: CkptError) {
        self.send(Frame::new(FrameKind::Goodbye, 0, &Goodbye { error }).expect("encode"))
            .await;
    }
}
