//! Tests of the pgoutput decoder.
//!
//! - `captured`: bytes produced by a real PostgreSQL 15, every field asserted.
//! - `sequence`: the stream-block state machine, protocol gating, errors.
//! - `roundtrip`: generated messages survive encode -> decode unchanged.
//! - `fuzz`: arbitrary and mutated payloads never panic or hang.

mod captured;
mod fuzz;
mod roundtrip;
mod sequence;
mod strategies;

use bytes::Bytes;

use super::{Decoder, DecoderOptions, LogicalMessage, StreamStart};

pub(super) fn hex(s: &str) -> Bytes {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect::<Vec<u8>>()
        .into()
}

pub(super) fn opts(proto_version: u32) -> DecoderOptions {
    DecoderOptions {
        proto_version,
        streaming_parallel: false,
    }
}

/// A decoder that has just seen Stream Start for `xid`.
pub(super) fn in_block(opts: DecoderOptions, xid: u32) -> Decoder {
    let mut d = Decoder::new(opts);
    let start = LogicalMessage::StreamStart(StreamStart {
        xid,
        first_segment: true,
    });
    d.decode(super::encode::to_bytes(&start))
        .expect("stream start");
    d
}

/// Decode one captured payload with a fresh decoder outside any stream block.
pub(super) fn decode_hex(opts: DecoderOptions, payload: &str) -> LogicalMessage {
    Decoder::new(opts)
        .decode(hex(payload))
        .unwrap_or_else(|e| panic!("{e}"))
}
