//! Lag, measured end to end with watermarks (docs/design.md §7).
//!
//! `run` emits `pg_logical_emit_message(false, 'walshift', '<name>:<n>')`
//! every interval. The message travels through the WAL and the slot like any
//! change; it counts as *applied* once every transaction received before it
//! is committed in the targets. The time from emit to applied is the lag.
//! Both ends are timed with this process's monotonic clock, so the figure
//! holds whatever the server's clock says.
//!
//! A watermark that has not come back yet makes the lag grow with its age:
//! a stalled stream shows as rising lag, not as the last good figure.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The logical message prefix of walshift's watermarks.
pub const PREFIX: &str = "walshift";

/// The content of watermark `seq` of spec `name`, emitted by the run whose
/// token is `run` ([`Watermarks::run`]).
pub fn content(name: &str, run: &str, seq: u64) -> String {
    format!("{name}:{run}:{seq}")
}

/// Emits a non-transactional logical message (`pg_logical_emit_message`
/// with `transactional = false`): it enters the WAL at once, even inside an
/// open transaction, and the stream delivers it in WAL order. Watermarks and
/// cut-over markers are such messages.
pub async fn emit_message(
    client: &tokio_postgres::Client,
    prefix: &str,
    content: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_logical_emit_message(false, $1, $2)",
            &[&prefix, &content],
        )
        .await
        .map(drop)
}

/// The sequence number of a watermark of spec `name` emitted by run `run`,
/// if `content` is one. Other specs' watermarks pass through every slot of
/// the database too, and so do an earlier run's: a run stopped with
/// watermarks still unread leaves them in the WAL ahead of whatever was
/// written after it, and taken for the next run's (numbered from 0 too)
/// they made a backlog look applied.
pub fn parse(name: &str, run: &str, prefix: &str, content: &[u8]) -> Option<u64> {
    if prefix != PREFIX {
        return None;
    }
    let text = std::str::from_utf8(content).ok()?;
    let (rest, seq) = text.rsplit_once(':')?;
    let (n, r) = rest.rsplit_once(':')?;
    (n == name && r == run).then(|| seq.parse().ok()).flatten()
}

#[derive(Debug, Default)]
struct Inner {
    /// Emitted, not yet applied: (seq, emitted at).
    in_flight: VecDeque<(u64, Instant)>,
    next: u64,
    /// The last applied watermark's lag and when it was applied.
    last: Option<(Duration, Instant)>,
}

/// Watermarks of one `run`.
#[derive(Debug)]
pub struct Watermarks {
    /// This run's token in each watermark it emits: its pid and start time.
    run: String,
    inner: Mutex<Inner>,
}

impl Default for Watermarks {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Two in one process (the tests) differ by the count.
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Watermarks {
            run: format!("{:x}.{nanos:x}.{n}", std::process::id()),
            inner: Mutex::default(),
        }
    }
}

/// At most this many watermarks are remembered; older ones are dropped (a
/// stream that stopped returning them still shows rising lag).
const MAX_IN_FLIGHT: usize = 4096;

impl Watermarks {
    /// This run's token, in the content of its watermarks ([`content`]).
    pub fn run(&self) -> &str {
        &self.run
    }

    /// Takes the next sequence number and records its emit time.
    pub fn emit(&self, now: Instant) -> u64 {
        let mut i = self.inner.lock().expect("watermarks lock");
        let seq = i.next;
        i.next += 1;
        i.in_flight.push_back((seq, now));
        if i.in_flight.len() > MAX_IN_FLIGHT {
            i.in_flight.pop_front();
        }
        seq
    }

    /// Forgets a watermark whose emit failed.
    pub fn cancel(&self, seq: u64) {
        let mut i = self.inner.lock().expect("watermarks lock");
        i.in_flight.retain(|(s, _)| *s != seq);
    }

    /// Watermark `seq` is applied: returns its lag. Older watermarks still in
    /// flight are dropped (they were lost, e.g. emitted before a reconnect).
    pub fn applied(&self, seq: u64, now: Instant) -> Option<Duration> {
        let mut i = self.inner.lock().expect("watermarks lock");
        let pos = i.in_flight.iter().position(|(s, _)| *s == seq)?;
        let (_, at) = i.in_flight[pos];
        i.in_flight.drain(..=pos);
        let lag = now.saturating_duration_since(at);
        i.last = Some((lag, now));
        Some(lag)
    }

    /// The lag now: the last measured one, or the age of the oldest
    /// watermark still out if that is larger. Unknown (`None`) until a
    /// watermark has come back since the stream started: before that, the
    /// age of the first one out says nothing about the backlog ahead of it
    /// (a run restarted on an hour of WAL would read a few milliseconds).
    pub fn lag(&self, now: Instant) -> Option<Duration> {
        let i = self.inner.lock().expect("watermarks lock");
        let (last, _) = i.last?;
        let waiting = i
            .in_flight
            .front()
            .map(|(_, at)| now.saturating_duration_since(*at));
        Some(waiting.map_or(last, |w| last.max(w)))
    }

    /// The stream (re)started, perhaps behind a backlog: the lag is unknown
    /// again until a watermark comes back through it. Watermarks still out
    /// stay out; they arrive with the WAL after the restart point.
    pub fn stream_started(&self) {
        self.inner.lock().expect("watermarks lock").last = None;
    }
}

/// Watermarks in stream order, waiting for the transactions before them.
#[derive(Debug, Default)]
pub struct PendingWatermarks {
    /// (seq, transactions received before it).
    queue: VecDeque<(u64, u64)>,
}

impl PendingWatermarks {
    /// Watermark `seq` arrived after `received` transactions.
    pub fn arrived(&mut self, seq: u64, received: u64) {
        self.queue.push_back((seq, received));
    }

    /// Pops the watermarks whose preceding transactions are all applied.
    pub fn release(&mut self, applied: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(&(seq, before)) = self.queue.front() {
            if before > applied {
                break;
            }
            out.push(seq);
            self.queue.pop_front();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_our_own_watermarks() {
        let parse = |name, prefix, content: &[u8]| parse(name, "r1", prefix, content);
        assert_eq!(
            parse("users-status", PREFIX, b"users-status:r1:42"),
            Some(42)
        );
        assert_eq!(parse("users-status", PREFIX, b"other:r1:42"), None);
        assert_eq!(
            parse("users-status", "other-tool", b"users-status:r1:42"),
            None
        );
        assert_eq!(
            parse("a:b", PREFIX, content("a:b", "r1", 7).as_bytes()),
            Some(7)
        );
        assert_eq!(parse("x", PREFIX, b"x:r1:notanumber"), None);
        assert_eq!(parse("x", PREFIX, b"x:42"), None);
    }

    /// Planted: without the run in the content, the earlier run's watermark
    /// 2 was applied as this run's 2 (tests/ops.rs caught `wait` saying ready
    /// on an unapplied backlog).
    #[test]
    fn an_earlier_runs_watermark_is_not_this_runs() {
        let (before, now) = (Watermarks::default(), Watermarks::default());
        assert_ne!(before.run(), now.run());
        let left_in_the_wal = content("s", before.run(), 2);
        assert_eq!(
            parse("s", now.run(), PREFIX, left_in_the_wal.as_bytes()),
            None
        );
        assert_eq!(
            parse("s", before.run(), PREFIX, left_in_the_wal.as_bytes()),
            Some(2)
        );
    }

    #[test]
    fn lag_is_emit_to_applied_and_grows_while_waiting() {
        let w = Watermarks::default();
        let t0 = Instant::now();
        let a = w.emit(t0);
        let b = w.emit(t0 + Duration::from_millis(100));
        assert_eq!(
            w.applied(a, t0 + Duration::from_millis(30)),
            Some(Duration::from_millis(30))
        );
        // b is still out: at t0+1s it has waited 900 ms.
        assert_eq!(
            w.lag(t0 + Duration::from_secs(1)),
            Some(Duration::from_millis(900))
        );
        assert_eq!(
            w.applied(b, t0 + Duration::from_millis(150)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            w.lag(t0 + Duration::from_secs(5)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(w.applied(b, t0), None, "applied once");
    }

    /// Planted: with the first watermark's age taken as the lag, this read
    /// 4 ms while that watermark still waited behind the backlog.
    #[test]
    fn lag_is_unknown_until_a_watermark_comes_back_through_the_stream() {
        let w = Watermarks::default();
        let t0 = Instant::now();
        let a = w.emit(t0);
        assert_eq!(w.lag(t0 + Duration::from_millis(4)), None);
        assert_eq!(w.lag(t0 + Duration::from_secs(30)), None);
        w.applied(a, t0 + Duration::from_secs(40));
        let b = w.emit(t0 + Duration::from_secs(41));
        assert_eq!(
            w.lag(t0 + Duration::from_secs(41)),
            Some(Duration::from_secs(40))
        );
        // A reconnect: unknown again, though b is young.
        w.stream_started();
        assert_eq!(w.lag(t0 + Duration::from_secs(42)), None);
        w.applied(b, t0 + Duration::from_secs(43));
        assert_eq!(
            w.lag(t0 + Duration::from_secs(43)),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_watermark_waits_for_the_transactions_before_it() {
        let mut p = PendingWatermarks::default();
        p.arrived(1, 10);
        p.arrived(2, 12);
        assert_eq!(p.release(9), Vec::<u64>::new());
        assert_eq!(p.release(10), vec![1]);
        assert_eq!(p.release(20), vec![2]);
    }
}
