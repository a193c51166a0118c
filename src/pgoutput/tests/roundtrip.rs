//! Generated message -> encode -> decode gives the message back, for every
//! message kind and every protocol version; and the decoder accepts exactly
//! the encoded bytes, not a byte less or more.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use super::in_block;
use super::strategies::{Case, arb_case, arb_placed_message};
use crate::pgoutput::encode::to_bytes;
use crate::pgoutput::*;

fn decoder_for(case: &Case) -> Decoder {
    if case.in_block {
        in_block(case.opts, 1)
    } else {
        Decoder::new(case.opts)
    }
}

fn check_round_trip(case: &Case) -> Result<(), TestCaseError> {
    let mut d = decoder_for(case);
    let decoded = d
        .decode(to_bytes(&case.msg))
        .map_err(|e| TestCaseError::fail(format!("{e} for {:?}", case.msg)))?;
    prop_assert_eq!(&decoded, &case.msg);
    // Stream Start and Stop move the state; nothing else does.
    let expect_inside = match &case.msg {
        LogicalMessage::StreamStart(_) => true,
        LogicalMessage::StreamStop => false,
        _ => case.in_block,
    };
    prop_assert_eq!(d.in_stream_block(), expect_inside);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(case in arb_case()) {
        check_round_trip(&case)?;
    }

    #[test]
    fn every_strict_prefix_is_refused(case in arb_case()) {
        let bytes = to_bytes(&case.msg);
        for len in 0..bytes.len() {
            let mut d = decoder_for(&case);
            let result = d.decode(bytes.slice(..len));
            prop_assert!(result.is_err(), "prefix of {} bytes decoded: {:?}", len, result);
            // A refused payload leaves the state as it was.
            prop_assert_eq!(d.in_stream_block(), case.in_block);
        }
    }

    #[test]
    fn trailing_bytes_are_refused(case in arb_case(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let mut bytes = to_bytes(&case.msg).to_vec();
        let at = bytes.len();
        bytes.extend_from_slice(&extra);
        let err = decoder_for(&case).decode(bytes.into());
        prop_assert_eq!(
            err,
            Err(DecodeError::TrailingBytes { message: case.msg.name(), offset: at, count: extra.len() })
        );
    }
}

/// The generator reaches every kind each version allows, so the properties
/// above really cover "all message kinds and all protocol versions".
#[test]
fn generator_covers_every_kind_of_every_version() {
    let mut runner = TestRunner::deterministic();
    for proto_version in 1..=4 {
        for streaming_parallel in [false, true] {
            let opts = DecoderOptions {
                proto_version,
                streaming_parallel,
            };
            let strategy = arb_placed_message(opts);
            let mut seen = BTreeSet::new();
            let mut with_xid = false;
            let mut with_abort_info = false;
            for _ in 0..3000 {
                let (in_block, msg) = strategy.new_tree(&mut runner).unwrap().current();
                seen.insert(msg.tag());
                with_xid |= in_block && matches!(msg, LogicalMessage::Insert(_));
                with_abort_info |= matches!(
                    &msg,
                    LogicalMessage::StreamAbort(StreamAbort {
                        abort_info: Some(_),
                        ..
                    })
                );
                check_round_trip(&Case {
                    opts,
                    in_block,
                    msg,
                })
                .unwrap();
            }
            let mut expected: BTreeSet<u8> = b"BCORYIUDTM".iter().copied().collect();
            if proto_version >= 2 {
                expected.extend(b"SEcA");
            }
            if proto_version >= 3 {
                expected.extend(b"bPKrp");
            }
            assert_eq!(seen, expected, "proto_version {proto_version}");
            assert_eq!(with_xid, proto_version >= 2);
            assert_eq!(with_abort_info, proto_version >= 4 && streaming_parallel);
        }
    }
}
