//! The stream-block state machine, protocol-version gating, and the errors a
//! caller can match on.

use std::time::{Duration, UNIX_EPOCH};

use super::{hex, in_block, opts};
use crate::Lsn;
use crate::pgoutput::encode::to_bytes;
use crate::pgoutput::*;

const STREAM_STOP: &str = "45";
const BEGIN: &str = "42000000000153ad58000303d1a903d6c8000002db";

#[test]
fn stream_stop_outside_a_block_is_refused() {
    let err = Decoder::new(opts(2)).decode(hex(STREAM_STOP)).unwrap_err();
    assert_eq!(
        err,
        DecodeError::OutsideStreamBlock {
            message: "Stream Stop"
        }
    );
    assert!(err.is_out_of_sequence());
}

#[test]
fn transaction_boundaries_inside_a_block_are_refused() {
    for (payload, message) in [
        (BEGIN, "Begin"),
        ("53000002e901", "Stream Start"),
        (
            "63000002e9000000000001582b680000000001582b98000303d1a90422c6",
            "Stream Commit",
        ),
        ("41000002ea000002eb", "Stream Abort"),
    ] {
        let mut d = in_block(opts(3), 9);
        let err = d.decode(hex(payload)).unwrap_err();
        assert_eq!(err, DecodeError::InsideStreamBlock { message });
        // The refused payload changed nothing: still inside the same block.
        assert_eq!(d.stream_xid(), Some(9));
    }
}

#[test]
fn stream_start_and_stop_move_the_state() {
    let mut d = Decoder::new(opts(2));
    assert!(!d.in_stream_block());
    d.decode(hex("53000002e901")).unwrap();
    assert_eq!(d.stream_xid(), Some(745));
    d.decode(hex(STREAM_STOP)).unwrap();
    assert_eq!(d.stream_xid(), None);
}

#[test]
fn messages_newer_than_the_protocol_version_are_refused() {
    let cases = [
        (1, "53000002e901", "Stream Start", 2),
        (1, STREAM_STOP, "Stream Stop", 2),
        (1, "41000002ea000002eb", "Stream Abort", 2),
        (
            2,
            "50000000000001641d100000000001641e30000303d1a9047c59000002ed6700",
            "Prepare",
            3,
        ),
    ];
    for (proto_version, payload, message, required) in cases {
        let err = Decoder::new(opts(proto_version))
            .decode(hex(payload))
            .unwrap_err();
        assert_eq!(
            err,
            DecodeError::RequiresProtocol {
                message,
                required,
                proto_version
            }
        );
    }
}

/// Stream Abort grows two fields only with protocol v4 AND streaming=parallel.
#[test]
fn stream_abort_info_needs_v4_and_parallel_streaming() {
    let with_info = to_bytes(&LogicalMessage::StreamAbort(StreamAbort {
        xid: 746,
        subxid: 747,
        abort_info: Some(StreamAbortInfo {
            abort_lsn: Lsn(0x1602270),
            abort_time: 848_623_948_781_256,
        }),
    }));
    assert_eq!(with_info.len(), 1 + 4 + 4 + 8 + 8);
    let parallel_v4 = DecoderOptions {
        proto_version: 4,
        streaming_parallel: true,
    };
    let LogicalMessage::StreamAbort(a) =
        Decoder::new(parallel_v4).decode(with_info.clone()).unwrap()
    else {
        panic!("not a stream abort")
    };
    assert_eq!(
        a.abort_info,
        Some(StreamAbortInfo {
            abort_lsn: Lsn(0x1602270),
            abort_time: 848_623_948_781_256
        })
    );
    // v4 with streaming=on, or parallel asked of an older version: 9 bytes only.
    for opts in [
        DecoderOptions {
            proto_version: 4,
            streaming_parallel: false,
        },
        DecoderOptions {
            proto_version: 3,
            streaming_parallel: true,
        },
    ] {
        let err = Decoder::new(opts).decode(with_info.clone()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TrailingBytes {
                message: "Stream Abort",
                offset: 9,
                count: 16
            }
        );
        assert!(Decoder::new(opts).decode(hex("41000002ea000002eb")).is_ok());
    }
    // And the short form is refused where the long one is expected.
    let err = Decoder::new(parallel_v4)
        .decode(hex("41000002ea000002eb"))
        .unwrap_err();
    assert_eq!(
        err,
        DecodeError::Truncated {
            field: "Stream Abort.abort_lsn",
            offset: 9,
            needed: 8,
            available: 0
        }
    );
}

#[test]
fn empty_and_unknown_payloads() {
    let mut d = Decoder::new(opts(4));
    assert_eq!(d.decode(hex("")).unwrap_err(), DecodeError::Empty);
    let err = d.decode(hex("7a00")).unwrap_err();
    assert_eq!(err, DecodeError::UnknownTag { tag: b'z' });
    assert_eq!(err.offset(), Some(0));
}

#[test]
fn errors_name_the_field_and_offset() {
    let mut d = Decoder::new(opts(1));
    // Begin cut in the middle of commit_time.
    let err = d.decode(hex("42000000000153ad58000303")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Truncated {
            field: "Begin.commit_time",
            offset: 9,
            needed: 8,
            available: 3
        }
    );
    assert_eq!(err.offset(), Some(9));
    assert_eq!(
        err.to_string(),
        "Begin.commit_time at offset 9 needs 8 bytes, 3 left"
    );

    // Relation whose name never ends.
    let err = d.decode(hex("52000040077075626c696300757365")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnterminatedString {
            field: "Relation.name",
            offset: 12
        }
    );

    // Origin name that is not UTF-8.
    let err = d.decode(hex("4f0000000000abcdefff00")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidUtf8 {
            field: "Origin.name",
            offset: 9
        }
    );

    // Relation with replica identity 'x'.
    let err = d.decode(hex("5200004007007500780000")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidByte {
            field: "Relation.replica_identity",
            offset: 8,
            value: b'x'
        }
    );

    // Insert with an unknown column kind 'q'.
    let err = d.decode(hex("49000040074e000171")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidByte {
            field: "TupleData column kind",
            offset: 8,
            value: b'q'
        }
    );

    // Text value with a negative length.
    let err = d.decode(hex("49000040074e000174ffffffff")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::NegativeLength {
            field: "TupleData text value",
            offset: 9,
            length: -1
        }
    );

    // Delete must say which old tuple follows.
    let err = d.decode(hex("44000040074e0000")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidByte {
            field: "Delete old tuple marker",
            offset: 5,
            value: b'N'
        }
    );

    // Update with an old key but no 'N' before the new tuple.
    let err = d.decode(hex("55000040074b00004b0000")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidByte {
            field: "Update new tuple marker",
            offset: 8,
            value: b'K'
        }
    );
}

#[test]
fn empty_namespace_means_pg_catalog() {
    let mut d = Decoder::new(opts(1));
    let msg = d.decode(hex("59000040010074797000")).unwrap();
    let LogicalMessage::Type(ty) = &msg else {
        panic!("not a type: {msg:?}")
    };
    assert_eq!(
        (ty.namespace.as_str(), ty.name.as_str()),
        ("pg_catalog", "typ")
    );
    // The encoder writes it back the way the server does.
    assert_eq!(to_bytes(&msg), hex("59000040010074797000"));
}

#[test]
fn tuple_values_are_slices_of_the_payload() {
    let payload = hex("49000040074e0001740000000568656c6c6f");
    let msg = Decoder::new(opts(1)).decode(payload.clone()).unwrap();
    let LogicalMessage::Insert(ins) = msg else {
        panic!("not an insert")
    };
    let value = ins.new_tuple[0].value().unwrap();
    assert_eq!(&value[..], b"hello");
    // Same memory as the payload: no copy was made.
    assert_eq!(value.as_ptr(), payload[13..].as_ptr());
}

#[test]
fn timestamps_convert_from_the_postgres_epoch() {
    assert_eq!(
        pg_timestamp_to_system_time(0),
        Some(UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS))
    );
    assert_eq!(
        pg_timestamp_to_system_time(-(PG_EPOCH_UNIX_SECS as i64) * 1_000_000),
        Some(UNIX_EPOCH)
    );
    for micros in [0, 1, -1, 848_623_948_781_256, -86_400_000_000] {
        let t = pg_timestamp_to_system_time(micros).unwrap();
        assert_eq!(system_time_to_pg_timestamp(t), micros);
    }
}
