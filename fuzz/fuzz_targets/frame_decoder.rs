//! The wire frame decoder and every message body decoder must never panic,
//! whatever bytes a peer sends, and a frame that decodes must re-encode to
//! the same bytes.
#![no_main]

use bytes::BytesMut;
use ckpt_proto::wire::{Frame, FrameCodec, Goodbye, Hello, HelloReply, Notification, Request, Response};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    // Small bound so the "too large" path is reachable too.
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    let mut consumed = 0usize;
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                let mut again = BytesMut::new();
                codec.encode(frame.clone(), &mut again).expect("a decoded frame re-encodes");
                assert_eq!(&again[..], &data[consumed..consumed + used], "re-encoding differs");
                consumed += used;
                decode_bodies(&frame);
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The bodies alone, as if a valid frame carried these bytes.
    let frame = Frame { kind: ckpt_proto::wire::FrameKind::Request, request_id: 1, body: bytes::Bytes::copy_from_slice(data) };
    decode_bodies(&frame);
});

fn decode_bodies(frame: &Frame) {
    let _ = frame.decode::<Hello>();
    let _ = frame.decode::<HelloReply>();
    let _ = frame.decode::<Request>();
    let _ = frame.decode::<Response>();
    let _ = frame.decode::<Notification>();
    let _ = frame.decode::<Goodbye>();
}
