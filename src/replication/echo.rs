//! Dropping the row changes of one replication origin in the reader task.
//!
//! walshift's own writes come back through the stream (its backfill writes a
//! set-mode source by the million). They are useless to the consumer, which
//! skips them (I5), but handing each one over still costs a channel slot, a
//! wake-up and a look at its bytes. This filter looks at the first bytes of
//! each pgoutput message inside the reader and drops the row changes of a
//! transaction whose Origin message names the given origin, so only its
//! Begin, Origin and Commit reach the consumer (the commit's end LSN is what
//! the consumer confirms).
//!
//! Everything else passes: Relation and Type messages (the consumer's caches
//! need them whoever wrote the transaction), logical messages, and any
//! transaction the filter cannot place. Protocol v2 stream blocks carry no
//! Origin message, so the filter never drops inside them.

/// The pgoutput message tags the filter reads (first byte of the message).
const BEGIN: u8 = b'B';
const COMMIT: u8 = b'C';
const ORIGIN: u8 = b'O';
const STREAM_START: u8 = b'S';
const STREAM_STOP: u8 = b'E';

/// Row changes (Insert, Update, Delete, Truncate): what the filter drops
/// inside a transaction of the filtered origin, and what the session loop
/// skips undecoded inside an echo (src/run/mod.rs).
pub fn is_row_change(tag: u8) -> bool {
    matches!(tag, b'I' | b'U' | b'D' | b'T')
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct EchoFilter {
    origin: Vec<u8>,
    state: State,
    dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between transactions, or inside a stream block.
    Outside,
    /// After Begin, before any Origin message: not (yet) an echo.
    Open,
    /// After an Origin message naming the filtered origin.
    Echo,
}

impl EchoFilter {
    pub fn new(origin: impl Into<String>) -> Self {
        EchoFilter {
            origin: origin.into().into_bytes(),
            state: State::Outside,
            dropped: 0,
        }
    }

    /// Whether the message `data` (one XLogData payload) should reach the
    /// consumer. Must see every message, in stream order.
    pub fn keep(&mut self, data: &[u8]) -> bool {
        let Some(&tag) = data.first() else {
            return true;
        };
        match tag {
            BEGIN => self.state = State::Open,
            ORIGIN if self.state == State::Open => {
                // 'O', Int64 origin commit LSN, String name (NUL-terminated).
                let name = data.get(9..).and_then(|rest| {
                    let end = rest.iter().position(|&b| b == 0)?;
                    Some(&rest[..end])
                });
                if name == Some(self.origin.as_slice()) {
                    self.state = State::Echo;
                }
            }
            COMMIT | STREAM_START | STREAM_STOP => self.state = State::Outside,
            t if is_row_change(t) && self.state == State::Echo => {
                self.dropped += 1;
                return false;
            }
            _ => {}
        }
        true
    }

    /// Row changes dropped so far.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Messages laid out as pgoutput sends them (protocol documentation,
    // "Logical Replication Message Formats"); only the parts the filter
    // reads matter, the rest is filler of the right length.
    fn begin() -> Vec<u8> {
        let mut m = vec![b'B'];
        m.extend_from_slice(&[0; 20]); // final LSN, commit time, xid
        m
    }

    fn origin(name: &str) -> Vec<u8> {
        let mut m = vec![b'O'];
        m.extend_from_slice(&7u64.to_be_bytes()); // origin commit LSN
        m.extend_from_slice(name.as_bytes());
        m.push(0);
        m
    }

    fn commit() -> Vec<u8> {
        let mut m = vec![b'C', 0];
        m.extend_from_slice(&[0; 24]); // commit LSN, end LSN, commit time
        m
    }

    fn change(tag: u8) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&1u32.to_be_bytes()); // relation OID
        m.extend_from_slice(&[b'N', 0, 0]); // new tuple, no columns
        m
    }

    fn relation() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(b"public\0t\0d\0\0");
        m
    }

    fn kept(f: &mut EchoFilter, msgs: &[Vec<u8>]) -> Vec<bool> {
        msgs.iter().map(|m| f.keep(m)).collect()
    }

    #[test]
    fn own_origin_row_changes_are_dropped_and_the_frame_kept() {
        let mut f = EchoFilter::new("walshift_x");
        let txn = [
            begin(),
            origin("walshift_x"),
            relation(),
            change(b'I'),
            change(b'U'),
            change(b'D'),
            change(b'T'),
            commit(),
        ];
        assert_eq!(
            kept(&mut f, &txn),
            [true, true, true, false, false, false, false, true],
            "Begin, Origin, Relation and Commit reach the consumer"
        );
        assert_eq!(f.dropped(), 4);
        // The next transaction, with no origin, is work again.
        let next = [begin(), change(b'I'), commit()];
        assert_eq!(kept(&mut f, &next), [true; 3]);
    }

    #[test]
    fn other_origins_and_prefixes_of_the_name_are_kept() {
        let mut f = EchoFilter::new("walshift_x");
        for name in ["subscription_feed", "walshift_xy", "walshift_", ""] {
            let txn = [begin(), origin(name), change(b'U'), commit()];
            assert_eq!(kept(&mut f, &txn), [true; 4], "origin {name:?}");
        }
        assert_eq!(f.dropped(), 0);
    }

    #[test]
    fn changes_outside_a_transaction_or_in_stream_blocks_are_kept() {
        let mut f = EchoFilter::new("walshift_x");
        // An Origin message without Begin (never sent) places nothing.
        assert_eq!(
            kept(&mut f, &[origin("walshift_x"), change(b'I')]),
            [true; 2]
        );
        // A stream block after an echo's Begin/Origin resets the state.
        let msgs = [
            begin(),
            origin("walshift_x"),
            vec![b'S', 0, 0, 0, 1, 1],
            change(b'I'),
        ];
        assert_eq!(kept(&mut f, &msgs), [true; 4]);
        // Truncated or empty messages pass (the decoder reports them).
        assert!(f.keep(&[]));
        assert!(f.keep(b"B"));
        assert!(f.keep(b"O\0\0"));
        assert_eq!(f.dropped(), 0);
    }
}
