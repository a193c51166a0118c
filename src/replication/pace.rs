//! How long the stream's reader waits before it reads again.
//!
//! The walsender flushes every message it writes, so a reader that reads as
//! soon as the socket is readable wakes once per message: a million times
//! for a million-row backfill's echoes, nearly all of walshift's CPU in
//! `perf`. Waiting lets the socket gather what arrives meanwhile. But the
//! socket holds little: the walsender's send buffer (`net.core.wmem_default`,
//! 208 KiB) is charged per flushed message, not per byte, so it fills after
//! a few hundred small messages (reads of at most 32 KiB at 20,000 one-row
//! transactions a second). A fixed 4 ms wait filled it at about 15,000
//! transactions a second; the walsender then sat in `WalSenderWriteData`
//! and the lag grew while both cores had room.
//!
//! So the wait follows the stream: long enough for about [`TARGET_FRAMES`]
//! messages (or [`TARGET_BYTES`]) at the rate the last read saw, at most
//! [`MAX_PAUSE`]. A read that found the socket full saw fewer messages than
//! arrived, and the next wait is a fraction of the last one, so the wait
//! shrinks until the socket no longer fills.

use std::time::Duration;

/// The longest wait: what a sparse stream (a keepalive, one transaction
/// now and then) adds to a change's latency.
pub(crate) const MAX_PAUSE: Duration = Duration::from_millis(4);

/// Waits shorter than this are not worth a timer (tokio's resolves to a
/// millisecond): the reader reads again when the socket is readable.
pub(crate) const MIN_PAUSE: Duration = Duration::from_micros(250);

/// Messages a read should find: a quarter of what the socket holds when
/// they are small.
pub(crate) const TARGET_FRAMES: usize = 64;

/// Bytes a read should find, for large messages.
pub(crate) const TARGET_BYTES: usize = 16 * 1024;

/// The wait after a read that found `bytes` in `frames` messages, `since`
/// after the read before it. `None`: read again as soon as there is data.
pub(crate) fn after_read(bytes: usize, frames: usize, since: Duration) -> Option<Duration> {
    if bytes == 0 {
        return Some(MAX_PAUSE);
    }
    let by_frames = TARGET_FRAMES as f64 / frames.max(1) as f64;
    let by_bytes = TARGET_BYTES as f64 / bytes as f64;
    let pause = since.mul_f64(by_frames.min(by_bytes)).min(MAX_PAUSE);
    (pause >= MIN_PAUSE).then_some(pause)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_sparse_stream_waits_the_longest() {
        // One keepalive in 100 ms.
        assert_eq!(after_read(18, 1, 100 * MS), Some(MAX_PAUSE));
    }

    #[test]
    fn a_steady_stream_waits_for_its_target() {
        // 60,000 messages a second of 50 bytes: 240 in a 4 ms round.
        let since = 4 * MS;
        let pause = after_read(240 * 50, 240, since).expect("a pause");
        let frames_next = 60_000.0 * pause.as_secs_f64();
        assert!(
            (frames_next - TARGET_FRAMES as f64).abs() < 1.0,
            "{pause:?} gathers {frames_next} messages"
        );
    }

    #[test]
    fn a_full_socket_shortens_the_wait() {
        // The socket held 300 messages of what arrived in 4 ms; the next
        // wait is a fraction of the last. Planted bug: a fixed 4 ms wait
        // (the reader before this module) returns MAX_PAUSE here.
        let pause = after_read(300 * 55, 300, 4 * MS).expect("a pause");
        assert!(pause < MAX_PAUSE / 4, "{pause:?}");
        // Repeated, it falls below a timer's worth: read on readiness.
        let mut since = pause;
        let mut rounds = 0;
        while let Some(p) = after_read(300 * 55, 300, since) {
            since = p;
            rounds += 1;
            assert!(rounds < 10, "the wait never ends: {p:?}");
        }
    }

    #[test]
    fn large_messages_count_by_bytes() {
        // 8 messages of 8 KiB: the bytes target is reached first.
        assert_eq!(after_read(8 * 8192, 8, 2 * MS), Some(MS / 2));
        // A read that filled most of the 256 KiB room: no wait.
        assert_eq!(after_read(200 * 1024, 25, 2 * MS), None);
    }

    #[test]
    fn an_empty_read_waits_the_longest() {
        assert_eq!(after_read(0, 0, MS), Some(MAX_PAUSE));
    }
}
