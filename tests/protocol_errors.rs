//! Bad input on the wire: random bytes, an oversize length, a truncated
//! frame, an unknown message kind, a wrong protocol version, a request body
//! that does not decode. Each gets an error reply or a clean close, the
//! server keeps serving other clients, and nothing is logged at panic level.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use ckpt_proto::wire::{
    ApiVersion, Frame, FrameCodec, FrameKind, Goodbye, Hello, HelloReply, Reply, Request, Response,
    API_VERSION, FRAME_MAGIC, PROTOCOL_VERSION,
};
use ckpt_proto::ErrorCode;
use common::Server;
use tokio_util::codec::{Decoder, Encoder};

fn encode(frame: Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(frame, &mut buf).unwrap();
    buf.to_vec()
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads frames until the peer closes; returns them.
fn read_until_close(stream: &mut TcpStream) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut codec = FrameCodec::default();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading: {e}"),
        }
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
    }
    frames
}

fn read_frame(stream: &mut TcpStream) -> Frame {
    let mut buf = BytesMut::new();
    let mut codec = FrameCodec::default();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = codec.decode(&mut buf).unwrap() {
            return frame;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed while waiting for a frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn hello(stream: &mut TcpStream, version: ApiVersion) -> HelloReply {
    let frame = Frame::new(
        FrameKind::Hello,
        0,
        &Hello {
            version,
            client_name: "test".into(),
            session: 0,
        },
    )
    .unwrap();
    stream.write_all(&encode(frame)).unwrap();
    let reply = read_frame(stream);
    assert_eq!(reply.kind, FrameKind::HelloReply);
    reply.decode().unwrap()
}

fn goodbye_code(frames: &[Frame]) -> Option<ErrorCode> {
    frames
        .iter()
        .find(|f| f.kind == FrameKind::Goodbye)
        .map(|f| f.decode::<Goodbye>().unwrap().error.code)
}

/// A healthy client still gets served.
fn still_serving(server: &Server) {
    let mut stream = connect(server);
    assert!(hello(&mut stream, API_VERSION).error.is_none());
    let frame = Frame::new(FrameKind::Request, 9, &Request::List).unwrap();
    stream.write_all(&encode(frame)).unwrap();
    let answer = read_frame(&mut stream);
    assert_eq!(answer.request_id, 9);
    assert!(matches!(
        answer.decode::<Response>().unwrap(),
        Ok(Reply::Checkpoints(_))
    ));
}

#[test]
fn bad_input_gets_an_error_or_a_clean_close_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());

    // Random bytes instead of a frame.
    let mut stream = connect(&server);
    let mut noise = vec![0u8; 4096];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in noise.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    noise[0] = b'X';
    let _ = stream.write_all(&noise);
    assert_eq!(
        goodbye_code(&read_until_close(&mut stream)),
        Some(ErrorCode::InvalidBuffer)
    );
    still_serving(&server);

    // An oversize length in an otherwise valid header.
    let mut stream = connect(&server);
    assert!(hello(&mut stream, API_VERSION).error.is_none());
    let mut header = Vec::new();
    header.extend_from_slice(&FRAME_MAGIC);
    header.push(PROTOCOL_VERSION);
    header.push(FrameKind::Request as u8);
    header.extend_from_slice(&[0, 0]);
    header.extend_from_slice(&1u64.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    stream.write_all(&header).unwrap();
    assert_eq!(
        goodbye_code(&read_until_close(&mut stream)),
        Some(ErrorCode::TooBig)
    );
    still_serving(&server);

    // A truncated frame, then the client hangs up: the server just closes.
    let mut stream = connect(&server);
    assert!(hello(&mut stream, API_VERSION).error.is_none());
    let full = encode(Frame::new(FrameKind::Request, 2, &Request::List).unwrap());
    stream.write_all(&full[..full.len() - 3]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let frames = read_until_close(&mut stream);
    assert!(
        frames.iter().all(|f| f.kind == FrameKind::Goodbye),
        "{frames:?}"
    );
    assert!(goodbye_code(&frames).is_none_or(|code| code == ErrorCode::MessageError));
    still_serving(&server);

    // An unknown frame kind.
    let mut stream = connect(&server);
    assert!(hello(&mut stream, API_VERSION).error.is_none());
    let mut bytes = encode(Frame::new(FrameKind::Request, 3, &Request::List).unwrap());
    bytes[5] = 42;
    stream.write_all(&bytes).unwrap();
    assert_eq!(
        goodbye_code(&read_until_close(&mut stream)),
        Some(ErrorCode::InvalidBuffer)
    );

    // A kind a client may not send.
    let mut stream = connect(&server);
    assert!(hello(&mut stream, API_VERSION).error.is_none());
    let response: Response = Ok(Reply::Done);
    stream
        .write_all(&encode(
            Frame::new(FrameKind::Response, 3, &response).unwrap(),
        ))
        .unwrap();
    assert_eq!(
        goodbye_code(&read_until_close(&mut stream)),
        Some(ErrorCode::InvalidBuffer)
    );

    // A wrong protocol version in the frame header.
    let mut stream = connect(&server);
    let mut bytes = encode(
        Frame::new(
            FrameKind::Hello,
            0,
            &Hello {
                version: API_VERSION,
                client_name: "x".into(),
                session: 0,
            },
        )
        .unwrap(),
    );
    bytes[4] = PROTOCOL_VERSION + 1;
    stream.write_all(&bytes).unwrap();
    assert_eq!(
        goodbye_code(&read_until_close(&mut stream)),
        Some(ErrorCode::VersionMismatch)
    );

    // A wrong API version in Hello: VERSION_MISMATCH and the supported version.
    let mut stream = connect(&server);
    let reply = hello(
        &mut stream,
        ApiVersion {
            release_code: b'B',
            major: 9,
            minor: 0,
        },
    );
    assert_eq!(
        reply.error.map(|e| e.code),
        Some(ErrorCode::VersionMismatch)
    );
    assert_eq!(reply.version, API_VERSION);

    // A request before Hello.
    let mut stream = connect(&server);
    stream
        .write_all(&encode(
            Frame::new(FrameKind::Request, 1, &Request::List).unwrap(),
        ))
        .unwrap();
    assert_eq!(
        goodbye_code(&read_until_close(&mut stream)),
        Some(ErrorCode::NotInitialized)
    );

    // A request whose body does not decode: an error reply, and the
    // connection stays usable.
    let mut stream = connect(&server);
    assert!(hello(&mut stream, API_VERSION).error.is_none());
    let garbage = Frame {
        kind: FrameKind::Request,
        request_id: 5,
        body: bytes::Bytes::from_static(&[0xff; 7]),
    };
    stream.write_all(&encode(garbage)).unwrap();
    let answer = read_frame(&mut stream);
    assert_eq!(answer.request_id, 5);
    assert_eq!(
        answer.decode::<Response>().unwrap().unwrap_err().code,
        ErrorCode::InvalidBuffer
    );
    stream
        .write_all(&encode(
            Frame::new(FrameKind::Request, 6, &Request::List).unwrap(),
        ))
        .unwrap();
    assert_eq!(read_frame(&mut stream).request_id, 6);

    still_serving(&server);
    let log = server.drain_log().join("\n");
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    assert!(!log.contains("ERROR"), "errors logged:\n{log}");
    assert!(server.terminate().success());
}
