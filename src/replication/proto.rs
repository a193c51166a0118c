//! The byte level of the replication protocol, without I/O.
//!
//! Framing of backend messages (with `CopyBothResponse`, which
//! postgres-protocol's parser does not know), the CopyData payloads of a
//! streaming replication session (`XLogData`, `Primary keepalive message`,
//! `Standby status update`), and the text of replication commands.
//! Names follow the protocol documentation's "Streaming Replication Protocol".

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::{Header, Message};

use crate::Lsn;

/// Postgres allocates at most 1 GiB for one message (`MaxAllocSize`); a
/// longer length from the wire means the stream is corrupt, not big.
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
const COPY_DATA_TAG: u8 = b'd';
const XLOG_DATA_TAG: u8 = b'w';
const PRIMARY_KEEPALIVE_TAG: u8 = b'k';
const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';

/// Seconds from the Unix epoch to Postgres's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// One backend message, with the two that matter for streaming split out.
pub enum BackendFrame {
    /// The server entered CopyBoth mode (reply to `START_REPLICATION`).
    CopyBothResponse,
    /// A CopyData payload, zero-copy out of the read buffer.
    CopyData(Bytes),
    /// Anything else, parsed by postgres-protocol.
    Message(Message),
}

/// Takes one complete backend message off the front of `buf`, or returns
/// `Ok(None)` when more bytes are needed.
pub fn read_frame(buf: &mut BytesMut) -> io::Result<Option<BackendFrame>> {
    let Some(header) = Header::parse(buf)? else {
        return Ok(None);
    };
    let total = header.len() as usize + 1;
    if total > MAX_MESSAGE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("backend message of {total} bytes exceeds the 1 GiB limit"),
        ));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    match header.tag() {
        COPY_BOTH_RESPONSE_TAG => {
            // Format and column codes carry nothing for replication.
            buf.advance(total);
            Ok(Some(BackendFrame::CopyBothResponse))
        }
        COPY_DATA_TAG => {
            let mut frame = buf.split_to(total);
            frame.advance(5);
            Ok(Some(BackendFrame::CopyData(frame.freeze())))
        }
        _ => Ok(Message::parse(buf)?.map(BackendFrame::Message)),
    }
}

/// A CopyData payload from a walsender in streaming mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `XLogData`: a chunk of the stream — for logical replication, one
    /// output-plugin message.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        /// Server clock at send, microseconds since 2000-01-01.
        send_time: i64,
        data: Bytes,
    },
    /// `Primary keepalive message`.
    PrimaryKeepalive {
        /// The current end of WAL on the server (`sentPtr` for logical).
        wal_end: Lsn,
        send_time: i64,
        /// The server wants a status update now, or it will time us out.
        reply_requested: bool,
    },
}

/// Parses a CopyData payload of a replication stream.
pub fn parse_replication_message(mut data: Bytes) -> io::Result<ReplicationMessage> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if data.is_empty() {
        return Err(bad("empty CopyData in replication stream"));
    }
    match data.get_u8() {
        XLOG_DATA_TAG => {
            if data.len() < 24 {
                return Err(bad("XLogData shorter than its 24-byte header"));
            }
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let send_time = data.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data,
            })
        }
        PRIMARY_KEEPALIVE_TAG => {
            if data.len() != 17 {
                return Err(bad("primary keepalive message is not 17 bytes"));
            }
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(data.get_u64()),
                send_time: data.get_i64(),
                reply_requested: data.get_u8() == 1,
            })
        }
        tag => Err(bad(&format!(
            "unknown replication message tag {:?}",
            tag as char
        ))),
    }
}

/// Positions reported to the server in a `Standby status update`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StandbyStatus {
    /// Received (written locally).
    pub write: Lsn,
    /// Durably processed: for walshift, committed in the target. The
    /// server advances the slot's `confirmed_flush_lsn` to this.
    pub flush: Lsn,
    /// Applied; walshift applies and flushes in the same commit.
    pub apply: Lsn,
}

/// Writes a `Standby status update` as a complete CopyData message.
pub fn write_standby_status_update(
    status: StandbyStatus,
    now: SystemTime,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    const PAYLOAD: usize = 1 + 8 * 4 + 1;
    out.reserve(1 + 4 + PAYLOAD);
    out.put_u8(COPY_DATA_TAG);
    out.put_i32((4 + PAYLOAD) as i32);
    out.put_u8(STANDBY_STATUS_UPDATE_TAG);
    out.put_u64(status.write.0);
    out.put_u64(status.flush.0);
    out.put_u64(status.apply.0);
    out.put_i64(pg_timestamp(now));
    out.put_u8(reply_requested as u8);
}

/// Microseconds since 2000-01-01 (`TimestampTz`).
pub fn pg_timestamp(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64 - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000,
        Err(e) => -(e.duration().as_micros() as i64) - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000,
    }
}

/// The inverse of [`pg_timestamp`].
pub fn system_time(pg_micros: i64) -> SystemTime {
    let unix_micros = pg_micros + (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000;
    if unix_micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(unix_micros as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(unix_micros.unsigned_abs())
    }
}

/// Quotes an identifier for a replication command.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal for a replication command.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What `CREATE_REPLICATION_SLOT` does with the slot's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it, named in the reply, usable with `SET TRANSACTION SNAPSHOT`
    /// by other sessions until this connection runs its next command.
    Export,
    /// Use it in this connection's open transaction (`BEGIN ... REPEATABLE READ`
    /// must come first).
    Use,
    /// No snapshot.
    Nothing,
}

/// Options of a logical slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotOptions {
    pub temporary: bool,
    pub snapshot: SnapshotAction,
    /// Decode prepared transactions at PREPARE (PG 15+ over this protocol).
    pub two_phase: bool,
    /// A failover slot (PG 17+): standbys with `sync_replication_slots = on`
    /// keep a copy a promoted standby continues from. Left out before 17,
    /// which has no such slots.
    pub failover: bool,
}

impl Default for SlotOptions {
    fn default() -> Self {
        SlotOptions {
            temporary: false,
            snapshot: SnapshotAction::Nothing,
            two_phase: false,
            failover: false,
        }
    }
}

/// `CREATE_REPLICATION_SLOT ... LOGICAL pgoutput`, in the syntax the server
/// understands: parenthesized options from PG 15, keywords before that.
pub fn create_logical_slot_command(
    name: &str,
    opts: SlotOptions,
    server_version_num: u32,
) -> String {
    let temporary = if opts.temporary { " TEMPORARY" } else { "" };
    if server_version_num >= 150000 {
        let snapshot = match opts.snapshot {
            SnapshotAction::Export => "export",
            SnapshotAction::Use => "use",
            SnapshotAction::Nothing => "nothing",
        };
        let mut options = format!("SNAPSHOT '{snapshot}'");
        if opts.two_phase {
            options.push_str(", TWO_PHASE true");
        }
        if opts.failover && server_version_num >= 170000 {
            options.push_str(", FAILOVER true");
        }
        format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput ({options})",
            quote_ident(name)
        )
    } else {
        let snapshot = match opts.snapshot {
            SnapshotAction::Export => "EXPORT_SNAPSHOT",
            SnapshotAction::Use => "USE_SNAPSHOT",
            SnapshotAction::Nothing => "NOEXPORT_SNAPSHOT",
        };
        format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput {snapshot}",
            quote_ident(name)
        )
    }
}

/// `START_REPLICATION SLOT ... LOGICAL lsn (options)`.
pub fn start_logical_command(slot: &str, start: Lsn, options: &[(String, String)]) -> String {
    let mut cmd = format!(
        "START_REPLICATION SLOT {} LOGICAL {start}",
        quote_ident(slot)
    );
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("{} {}", quote_ident(k), quote_literal(v)))
            .collect();
        cmd.push_str(" (");
        cmd.push_str(&opts.join(", "));
        cmd.push(')');
    }
    cmd
}

/// `DROP_REPLICATION_SLOT name [WAIT]`.
pub fn drop_slot_command(name: &str, wait: bool) -> String {
    let wait = if wait { " WAIT" } else { "" };
    format!("DROP_REPLICATION_SLOT {}{wait}", quote_ident(name))
}

/// Reads `server_version_num` out of the `server_version` parameter the
/// server reports at startup ("15.18 (Debian ...)", "17beta1", "9.6.24").
pub fn parse_server_version(v: &str) -> Option<u32> {
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(major * 10000 + minor * 100 + patch)
    }
}

/// Parses a duration setting as `SHOW` prints it (`60s`, `1min`, `500ms`,
/// `0`); `None` when it is 0 (disabled) or unreadable.
pub fn parse_show_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        "us" => Duration::from_micros(n),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn copy_data(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'd');
        b.put_i32(4 + payload.len() as i32);
        b.put_slice(payload);
        b
    }

    #[test]
    fn frames_copy_both_then_copy_data_arriving_in_pieces() {
        let mut wire = BytesMut::new();
        // CopyBothResponse: format 0, zero columns.
        wire.put_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        wire.extend_from_slice(&copy_data(b"\x6b0123456789abcdef\x01"));
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = read_frame(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert!(matches!(frames[0], BackendFrame::CopyBothResponse));
        let BackendFrame::CopyData(payload) = &frames[1] else {
            panic!("second frame is not CopyData")
        };
        assert_eq!(payload.len(), 18);
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_absurd_lengths_instead_of_allocating() {
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(read_frame(&mut buf).is_err());
    }

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut p = BytesMut::new();
        p.put_u8(b'w');
        p.put_u64(0x10);
        p.put_u64(0x20);
        p.put_i64(42);
        p.put_slice(b"Bxyz");
        assert_eq!(
            parse_replication_message(p.freeze()).unwrap(),
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x10),
                wal_end: Lsn(0x20),
                send_time: 42,
                data: Bytes::from_static(b"Bxyz")
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x30);
        k.put_i64(7);
        k.put_u8(1);
        assert_eq!(
            parse_replication_message(k.freeze()).unwrap(),
            ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(0x30),
                send_time: 7,
                reply_requested: true
            }
        );
        assert!(parse_replication_message(Bytes::from_static(b"w123")).is_err());
        assert!(parse_replication_message(Bytes::from_static(b"k")).is_err());
        assert!(parse_replication_message(Bytes::from_static(b"")).is_err());
    }

    #[test]
    fn standby_status_update_layout() {
        let mut out = BytesMut::new();
        let now = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS + 1);
        write_standby_status_update(
            StandbyStatus {
                write: Lsn(3),
                flush: Lsn(2),
                apply: Lsn(1),
            },
            now,
            false,
            &mut out,
        );
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&out[6..14], &3u64.to_be_bytes());
        assert_eq!(&out[14..22], &2u64.to_be_bytes());
        assert_eq!(&out[22..30], &1u64.to_be_bytes());
        assert_eq!(&out[30..38], &1_000_000i64.to_be_bytes());
        assert_eq!(out[38], 0);
    }

    #[test]
    fn commands_by_server_version() {
        let opts = SlotOptions {
            temporary: true,
            snapshot: SnapshotAction::Export,
            two_phase: true,
            failover: false,
        };
        let failover = SlotOptions {
            failover: true,
            ..SlotOptions::default()
        };
        assert_eq!(
            create_logical_slot_command("s1", failover, 170002),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER true)"
        );
        assert_eq!(
            create_logical_slot_command("s1", failover, 160004),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput (SNAPSHOT 'nothing')",
            "no failover slots before 17"
        );
        assert_eq!(
            create_logical_slot_command("s1", opts, 160000),
            "CREATE_REPLICATION_SLOT \"s1\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export', TWO_PHASE true)"
        );
        assert_eq!(
            create_logical_slot_command("s1", SlotOptions::default(), 140010),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        );
        assert_eq!(
            start_logical_command(
                "s",
                Lsn(0x1_0000_0010),
                &[
                    ("proto_version".into(), "2".into()),
                    ("publication_names".into(), "\"p'1\"".into())
                ]
            ),
            "START_REPLICATION SLOT \"s\" LOGICAL 1/10 (\"proto_version\" '2', \"publication_names\" '\"p''1\"')"
        );
        assert_eq!(
            drop_slot_command("a\"b", true),
            "DROP_REPLICATION_SLOT \"a\"\"b\" WAIT"
        );
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-0+deb12u1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("17beta1"), Some(170000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("x"), None);
    }

    #[test]
    fn show_durations() {
        assert_eq!(parse_show_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_show_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(
            parse_show_duration("500ms"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_show_duration("0"), None);
        assert_eq!(parse_show_duration("soon"), None);
    }

    proptest! {
        /// The framer never panics and never asks for absurd memory,
        /// whatever arrives on the socket.
        #[test]
        fn framing_arbitrary_bytes_never_panics(bytes: Vec<u8>) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = read_frame(&mut buf) {
                if let BackendFrame::CopyData(p) = frame {
                    let _ = parse_replication_message(p);
                }
            }
        }

        #[test]
        fn timestamps_round_trip(micros in -1_000_000_000_000_000i64..4_000_000_000_000_000i64) {
            prop_assert_eq!(pg_timestamp(system_time(micros)), micros);
        }
    }
}
