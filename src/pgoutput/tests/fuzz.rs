//! The fuzz target, as property tests (no nightly toolchain for cargo-fuzz):
//! whatever bytes arrive, the decoder returns — `Ok` or `Err` — without
//! panicking, and quickly.
//!
//! "Quickly" is checked with a deliberately loose wall-clock bound; the real
//! guarantee is structural (every loop is bounded by a count that was first
//! checked against the bytes left), and these tests are what would catch a
//! slip in it: an overflow panic, an out-of-range slice, a huge allocation.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::in_block;
use super::strategies::{arb_case, arb_options};
use crate::pgoutput::encode::to_bytes;
use crate::pgoutput::*;

/// Far above the microseconds a payload takes, even unoptimised on a busy
/// CI machine; only a hang or runaway work could exceed it.
const BOUND: Duration = Duration::from_secs(2);

fn decode_bounded(d: &mut Decoder, data: Bytes) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let _ = d.decode(data);
    let took = started.elapsed();
    prop_assert!(took < BOUND, "decode took {:?}", took);
    Ok(())
}

/// A decoder inside a stream block when asked and the version has them.
fn decoder(opts: DecoderOptions, inside: bool) -> Decoder {
    if inside && opts.proto_version >= 2 {
        in_block(opts, 7)
    } else {
        Decoder::new(opts)
    }
}

/// Every tag pgoutput defines, so random bodies get past the first byte.
const TAGS: &[u8] = b"BCORYIUDTMSEcAbPKrp";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn fuzz_arbitrary_bytes_never_panic_or_hang(
        opts in arb_options(),
        inside in any::<bool>(),
        data in vec(any::<u8>(), 0..512),
    ) {
        decode_bounded(&mut decoder(opts, inside), data.into())?;
    }

    #[test]
    fn fuzz_arbitrary_body_after_a_valid_tag_never_panics_or_hangs(
        opts in arb_options(),
        inside in any::<bool>(),
        tag in proptest::sample::select(TAGS),
        body in vec(any::<u8>(), 0..512),
    ) {
        let mut data = vec![tag];
        data.extend(body);
        decode_bounded(&mut decoder(opts, inside), data.into())?;
    }

    #[test]
    fn fuzz_mutated_valid_messages_never_panic_or_hang(
        case in arb_case(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut data = to_bytes(&case.msg).to_vec();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        if truncate {
            data.truncate(cut.index(data.len() + 1));
        }
        decode_bounded(&mut decoder(case.opts, case.in_block), data.into())?;
    }

    /// One decoder across many payloads, so refused and accepted messages
    /// interleave with stream-block transitions.
    #[test]
    fn fuzz_one_decoder_through_a_sequence_never_panics_or_hangs(
        opts in arb_options(),
        payloads in vec(
            prop_oneof![
                arb_case().prop_map(|c| to_bytes(&c.msg).to_vec()),
                vec(any::<u8>(), 0..64),
            ],
            0..32,
        ),
    ) {
        let mut d = Decoder::new(opts);
        for p in payloads {
            decode_bounded(&mut d, p.into())?;
        }
    }
}

/// Counts at their maximum with almost nothing behind them: refused before
/// any allocation, instead of reserving gigabytes.
#[test]
fn huge_counts_are_refused_before_allocating() {
    let mut d = Decoder::new(DecoderOptions::default());
    // Truncate announcing u32::MAX relations.
    let err = d.decode(super::hex("54ffffffff00")).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::CountTooLarge {
                count: 0xFFFF_FFFF,
                ..
            }
        ),
        "{err}"
    );
    // Insert announcing 65535 columns with 3 bytes left.
    let err = d.decode(super::hex("49000040074effff6e6e6e")).unwrap_err();
    assert!(
        matches!(err, DecodeError::CountTooLarge { count: 65535, .. }),
        "{err}"
    );
    // Message content claiming 2 GiB.
    let err = d
        .decode(super::hex(concat!(
            "4d",
            "00",
            "0000000000000000",
            "00",
            "7f7f7f7f",
            "41"
        )))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Truncated {
                needed: 0x7f7f_7f7f,
                ..
            }
        ),
        "{err}"
    );
}
