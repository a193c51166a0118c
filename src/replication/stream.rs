//! The CopyBoth stream of a logical replication session.
//!
//! One task owns the socket (STYLE: "one task owns a socket"). It reads
//! frames, hands stream events to the consumer through a bounded channel,
//! and writes standby status updates. Its loop never waits on the consumer
//! alone: while the channel is full it stops *reading* (so memory stays
//! bounded) but keeps *writing* status updates on a timer, which is what
//! keeps the walsender from dropping us after `wal_sender_timeout` (I7). The
//! walsender reads our replies even while its own send buffer is full.
//!
//! The same loop bounds the silence of the link: the walsender sends a
//! keepalive once half its `wal_sender_timeout` has passed without a reply
//! from us, and we ask for one whenever a status interval passed without
//! hearing anything; so when nothing at all has arrived for
//! `wal_sender_timeout` plus one status interval (60 s + 10 s by default),
//! the link is dead, whatever TCP says (a middlebox may still acknowledge
//! it). The stream then ends with [`ReplicationError::Silent`] and the
//! walsender's pid is left for the next session to terminate, so the slot
//! is free again at once.
//!
//! ```text
//!  socket ──frames──▶ reader task ──ReplicationEvent──▶ consumer (bounded)
//!     ▲                   │  ▲                               │
//!     └─status updates────┘  └──── Feedback (atomics) ◀──────┘ confirm(lsn)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::ReplicationError;
use super::conn::{ReplicationClient, Socket, body_error, db_error, log_notice};
use super::echo::EchoFilter;
use super::proto::{self, BackendFrame, ReplicationMessage, StandbyStatus};
use crate::Lsn;

/// Events handed to the consumer, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// One output-plugin message (for pgoutput: one logical message).
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// The server's keepalive. In stream order, so a consumer with no
    /// transaction pending may confirm `wal_end`: every change before it has
    /// already been delivered. That keeps an idle slot from pinning WAL.
    Keepalive { wal_end: Lsn, send_time: i64 },
}

/// Options for [`LogicalStream::start`].
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Events buffered between the reader and the consumer (handed over in
    /// batches of up to [`BATCH`]). The reader stops reading (but keeps
    /// answering) when about this many are waiting.
    pub channel_capacity: usize,
    /// Status updates are sent at this interval even with nothing new;
    /// `None` derives it from the server's `wal_sender_timeout`.
    pub status_interval: Option<Duration>,
    /// Drop the row changes of transactions whose pgoutput Origin message
    /// names this replication origin before they are handed over (their
    /// Begin, Origin and Commit still are): see [`EchoFilter`]. Only for a
    /// pgoutput stream.
    pub skip_changes_of_origin: Option<String>,
    /// How long the stream may stay silent before it is given up as dead;
    /// `None` derives it from `wal_sender_timeout` (see
    /// [`receive_timeout_for`]).
    pub receive_timeout: Option<Duration>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            channel_capacity: 1024,
            status_interval: None,
            skip_changes_of_origin: None,
            receive_timeout: None,
        }
    }
}

/// The positions the consumer reports; shared between the consumer and
/// the reader task. Each only moves forward.
#[derive(Debug, Default)]
struct Positions {
    write: AtomicU64,
    flush: AtomicU64,
    apply: AtomicU64,
    /// The next update asks the server to answer at once (with a keepalive).
    reply: AtomicBool,
    /// Wakes the reader to send an update now.
    wake: Notify,
}

/// The consumer's side of status updates. Cheap to clone; positions never
/// move backwards, whatever order calls arrive in.
#[derive(Debug, Clone)]
pub struct Feedback(Arc<Positions>);

impl Feedback {
    /// Everything up to `lsn` is durably processed: the server may advance
    /// the slot's `confirmed_flush_lsn` to it and recycle older WAL. Only
    /// call it once the work up to `lsn` is committed (I4).
    pub fn confirm(&self, lsn: Lsn) {
        self.0.flush.fetch_max(lsn.0, Ordering::AcqRel);
        self.0.apply.fetch_max(lsn.0, Ordering::AcqRel);
        self.0.write.fetch_max(lsn.0, Ordering::AcqRel);
        self.0.wake.notify_one();
    }

    /// Sets only the write (received) position.
    pub fn set_write(&self, lsn: Lsn) {
        self.0.write.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// Sets only the flush position.
    pub fn set_flush(&self, lsn: Lsn) {
        self.0.flush.fetch_max(lsn.0, Ordering::AcqRel);
        self.0.wake.notify_one();
    }

    /// Sets only the apply position.
    pub fn set_apply(&self, lsn: Lsn) {
        self.0.apply.fetch_max(lsn.0, Ordering::AcqRel);
        self.0.wake.notify_one();
    }

    /// Sends a status update now that asks the server for a keepalive: its
    /// position says how far the stream has been sent.
    pub fn request_reply(&self) {
        self.0.reply.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }

    /// The positions the next status update will carry.
    pub fn status(&self) -> StandbyStatus {
        StandbyStatus {
            write: Lsn(self.0.write.load(Ordering::Acquire)),
            flush: Lsn(self.0.flush.load(Ordering::Acquire)),
            apply: Lsn(self.0.apply.load(Ordering::Acquire)),
        }
    }
}

enum ReaderCommand {
    Close(oneshot::Sender<Result<(), ReplicationError>>),
}

/// Events the reader hands over at once: one channel operation and at most
/// one wake-up per batch instead of per message (a backfill's echoes come by
/// the million).
pub const BATCH: usize = 64;

type Item = Result<ReplicationEvent, ReplicationError>;

/// A running logical replication stream.
pub struct LogicalStream {
    events: mpsc::Receiver<Vec<Item>>,
    /// The rest of the batch being consumed.
    buffer: std::collections::VecDeque<Item>,
    feedback: Feedback,
    control: mpsc::Sender<ReaderCommand>,
    task: JoinHandle<()>,
    status_interval: Duration,
    receive_timeout: Option<Duration>,
    /// The host and the walsender's pid (0 if unknown).
    backend: (String, i32),
}

impl LogicalStream {
    /// Sends `START_REPLICATION SLOT slot LOGICAL start (options)` on
    /// `client` and hands the socket to a reader task.
    ///
    /// `start` may be `Lsn::INVALID`: the server then resumes at the slot's
    /// `confirmed_flush_lsn`.
    pub async fn start(
        mut client: ReplicationClient,
        slot: &str,
        start: Lsn,
        plugin_options: &[(String, String)],
        options: StreamOptions,
    ) -> Result<Self, ReplicationError> {
        let wal_sender_timeout = client.wal_sender_timeout().await?;
        let status_interval = match options.status_interval {
            Some(i) => i,
            None => status_interval_for(wal_sender_timeout),
        };
        let receive_timeout =
            if crate::mirror::plant::active(crate::mirror::plant::Plant::NoReceiveTimeout) {
                None
            } else {
                Some(
                    options.receive_timeout.unwrap_or_else(|| {
                        receive_timeout_for(wal_sender_timeout, status_interval)
                    }),
                )
            };
        client
            .enter_copy_both(&proto::start_logical_command(slot, start, plugin_options))
            .await?;
        let backend = (client.target.to_string(), client.backend_pid);
        let (tx, rx) = mpsc::channel(options.channel_capacity.div_ceil(BATCH).max(1));
        let (control_tx, control_rx) = mpsc::channel(1);
        let positions = Arc::new(Positions::default());
        let reader = Reader {
            socket: client.socket,
            read_buf: client.read_buf,
            write_buf: BytesMut::with_capacity(64),
            events: tx,
            positions: positions.clone(),
            control: control_rx,
            status_interval,
            echo: options.skip_changes_of_origin.map(EchoFilter::new),
            receive_timeout,
            last_heard: tokio::time::Instant::now(),
            target: client.target.to_string(),
            backend_pid: client.backend_pid,
            application_name: client.application_name.clone(),
        };
        let task = tokio::spawn(reader.run());
        Ok(LogicalStream {
            events: rx,
            buffer: std::collections::VecDeque::new(),
            feedback: Feedback(positions),
            control: control_tx,
            task,
            status_interval,
            receive_timeout,
            backend,
        })
    }

    /// The next event; `None` once the stream has ended (after an error was
    /// delivered, or after [`LogicalStream::close`]).
    pub async fn recv(&mut self) -> Option<Result<ReplicationEvent, ReplicationError>> {
        loop {
            if let Some(ev) = self.buffer.pop_front() {
                return Some(ev);
            }
            // Cancel-safe: a batch received is stored before this returns.
            let batch = self.events.recv().await?;
            self.buffer.extend(batch);
        }
    }

    /// The next event if one is already waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<ReplicationEvent, ReplicationError>> {
        if self.buffer.is_empty() {
            let batch = self.events.try_recv().ok()?;
            self.buffer.extend(batch);
        }
        self.buffer.pop_front()
    }

    /// A handle for reporting progress, usable from other tasks.
    pub fn feedback(&self) -> Feedback {
        self.feedback.clone()
    }

    /// The interval of unsolicited status updates.
    pub fn status_interval(&self) -> Duration {
        self.status_interval
    }

    /// The host the stream comes from and its walsender's pid (0 if the
    /// server did not say).
    pub fn backend(&self) -> (&str, i32) {
        (&self.backend.0, self.backend.1)
    }

    /// How long the stream may stay silent before it ends as dead (`None`
    /// only under the test plant that removes the bound).
    pub fn receive_timeout(&self) -> Option<Duration> {
        self.receive_timeout
    }

    /// Sends a last status update with the current positions, then ends the
    /// session. Confirmed positions reach the server before the socket closes.
    pub async fn close(self) -> Result<(), ReplicationError> {
        let (tx, rx) = oneshot::channel();
        if self.control.send(ReaderCommand::Close(tx)).await.is_err() {
            // The reader already ended (the server closed the stream).
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

impl Drop for LogicalStream {
    fn drop(&mut self) {
        // Dropping without close() is an abrupt disconnect, as a crash would be.
        self.task.abort();
    }
}

/// Unsolicited updates at 40% of `wal_sender_timeout`, at most every 10 s
/// (`wal_receiver_status_interval`'s default). The server asks for a reply at
/// half its timeout; replying earlier on our own means a reply request that
/// sits unread behind a full socket buffer (slow consumer) never matters,
/// with room for one late tick.
fn status_interval_for(wal_sender_timeout: Option<Duration>) -> Duration {
    let max = Duration::from_secs(10);
    match wal_sender_timeout {
        Some(t) => (t.mul_f64(0.4)).clamp(Duration::from_millis(100), max),
        None => max,
    }
}

/// The stream is dead after `wal_sender_timeout` plus one status interval
/// of silence: by then the server has sent a keepalive (at half its
/// timeout) and answered the reply we ask for after each silent interval.
/// With the server's timeout off, 60 s stands in for it.
pub fn receive_timeout_for(
    wal_sender_timeout: Option<Duration>,
    status_interval: Duration,
) -> Duration {
    wal_sender_timeout.unwrap_or(Duration::from_secs(60)) + status_interval
}

struct Reader {
    socket: Socket,
    read_buf: BytesMut,
    write_buf: BytesMut,
    events: mpsc::Sender<Vec<Item>>,
    positions: Arc<Positions>,
    control: mpsc::Receiver<ReaderCommand>,
    status_interval: Duration,
    echo: Option<EchoFilter>,
    receive_timeout: Option<Duration>,
    /// When bytes last arrived, or reading resumed after a pause.
    last_heard: tokio::time::Instant,
    target: String,
    backend_pid: i32,
    application_name: String,
}

/// What woke the reader's loop.
enum Wake {
    Close(oneshot::Sender<Result<(), ReplicationError>>),
    SendStatus,
    Delivered,
    /// The pause after a small read is over.
    Quiet,
    Read(std::io::Result<usize>),
    /// Nothing arrived within the receive timeout.
    Silent,
}

/// How much room a read gets.
const READ_CHUNK: usize = 256 * 1024;

/// Reads into `buf`, first making room for [`READ_CHUNK`] bytes once less
/// than a quarter of that is left. Not on every read: the frames handed over
/// share the buffer they were read into, so a fresh buffer per small read
/// would pin one allocation per event.
async fn read_some(socket: &mut Socket, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    socket.read_buf(buf).await
}

/// What handling one frame produced.
enum FrameResult {
    Event(ReplicationEvent),
    Nothing,
    /// The server ended the stream (CopyDone) or sent an error.
    End(Result<(), ReplicationError>),
}

impl Reader {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.status_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A batch decoded but not yet accepted by the consumer. While it
        // waits, nothing more is read: memory stays bounded by the channel.
        let mut pending: Option<Vec<Item>> = None;
        let mut ending = false;
        // Set after a read: the next read waits until then (pace.rs).
        let mut quiet_until: Option<tokio::time::Instant> = None;
        // The last read: when it was, and the bytes it got (its messages
        // are counted as they are decoded).
        let mut last_read = tokio::time::Instant::now();
        let mut just_read: Option<(usize, Duration)> = None;
        loop {
            let frames = self.decode_buffered(&mut pending, &mut ending).await;
            if let Some((bytes, since)) = just_read.take()
                && let Some(pause) = super::pace::after_read(bytes, frames, since)
            {
                quiet_until = Some(tokio::time::Instant::now() + pause);
                // Else every message the walsender flushes meanwhile wakes
                // the thread, read or not (net::socket::Raw).
                if let Err(e) = self.socket.detach() {
                    ending = true;
                    pending = Some(vec![Err(e.into())]);
                }
            }
            if ending && pending.is_none() {
                return;
            }

            let positions = self.positions.clone();
            let wake = tokio::select! {
                biased;
                // 1. The consumer asked to close: report positions, then leave.
                Some(ReaderCommand::Close(reply)) = self.control.recv() => Wake::Close(reply),
                // 2. The timer: answer the server even if the consumer is slow
                //    and nothing is being read (I7). Before delivery, so a
                //    busy stream cannot starve it.
                _ = ticker.tick() => Wake::SendStatus,
                // 3. The consumer confirmed progress: tell the server soon,
                //    so the slot releases WAL without waiting for the tick.
                _ = positions.wake.notified() => Wake::SendStatus,
                // 4. Hand the waiting event over once there is room.
                permit = self.events.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => {
                        permit.send(pending.take().expect("guarded by is_some"));
                        Wake::Delivered
                    }
                    // The consumer is gone; nobody to stream for.
                    Err(_) => return,
                },
                // 5. Read more, only when nothing is waiting and the pause
                //    after a small read is over.
                read = read_some(&mut self.socket, &mut self.read_buf),
                    if pending.is_none() && !ending && quiet_until.is_none() => Wake::Read(read),
                _ = tokio::time::sleep_until(quiet_until.unwrap_or_else(tokio::time::Instant::now)),
                    if quiet_until.is_some() => Wake::Quiet,
                // 6. Silence past the bound, while we were reading.
                _ = tokio::time::sleep_until(self.last_heard + self.receive_timeout.unwrap_or_default()),
                    if self.receive_timeout.is_some() && pending.is_none() && !ending => Wake::Silent,
            };
            match wake {
                Wake::Close(reply) => {
                    let r = self.finish().await;
                    let _ = reply.send(r);
                    return;
                }
                Wake::SendStatus => {
                    // Asked for, or nothing heard for an interval: the
                    // server's answer proves the link both ways.
                    let reply = self.positions.reply.swap(false, Ordering::AcqRel)
                        || self.last_heard.elapsed() >= self.status_interval;
                    if let Err(e) = self.send_status(reply).await {
                        let _ = self.events.send(vec![Err(e)]).await;
                        return;
                    }
                }
                // Reading resumes: the silence counts from now.
                Wake::Delivered => self.last_heard = tokio::time::Instant::now(),
                Wake::Quiet => {
                    quiet_until = None;
                    if let Err(e) = self.socket.attach() {
                        ending = true;
                        pending = Some(vec![Err(e.into())]);
                    }
                }
                Wake::Silent => {
                    ending = true;
                    pending = Some(vec![Err(self.silent())]);
                }
                Wake::Read(Ok(0)) => {
                    ending = true;
                    pending = Some(vec![Err(ReplicationError::Closed)]);
                }
                Wake::Read(Ok(n)) => {
                    let now = tokio::time::Instant::now();
                    self.last_heard = now;
                    just_read = Some((n, now - last_read));
                    last_read = now;
                }
                Wake::Read(Err(e)) => {
                    ending = true;
                    pending = Some(vec![Err(e.into())]);
                }
            }
        }
    }

    /// Decodes what is already buffered, handing batches over directly while
    /// the consumer has room; what it has no room for waits in `pending`.
    /// A frame that ends the stream (or fails) sets `ending`. Returns the
    /// number of frames decoded.
    async fn decode_buffered(
        &mut self,
        pending: &mut Option<Vec<Item>>,
        ending: &mut bool,
    ) -> usize {
        let mut batch: Vec<Item> = Vec::new();
        let mut frames = 0;
        while pending.is_none() && !*ending {
            let frame = match proto::read_frame(&mut self.read_buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    *ending = true;
                    batch.push(Err(e.into()));
                    break;
                }
            };
            frames += 1;
            match self.handle(frame).await {
                Ok(FrameResult::Event(ev)) => batch.push(Ok(ev)),
                Ok(FrameResult::Nothing) => {}
                Ok(FrameResult::End(r)) => {
                    *ending = true;
                    if let Err(e) = r {
                        batch.push(Err(e));
                    }
                }
                Err(e) => {
                    *ending = true;
                    batch.push(Err(e));
                }
            }
            if batch.len() >= BATCH {
                *pending = self.hand_over(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            *pending = self.hand_over(batch);
        }
        frames
    }

    /// Nothing arrived within the receive timeout: the link is dead. Its
    /// backend is left for the next session to terminate.
    fn silent(&self) -> ReplicationError {
        let silent = self.last_heard.elapsed();
        tracing::warn!(
            host = %self.target,
            silent = ?silent,
            "dead link: nothing arrived on the replication stream within its receive timeout"
        );
        crate::metrics::dead_link("stream");
        if self.backend_pid != 0 {
            crate::net::watch::abandon(&self.target, self.backend_pid, &self.application_name);
        }
        ReplicationError::Silent(silent)
    }

    /// Hands `batch` to the consumer if it has room; else returns it, to be
    /// handed over once it has.
    fn hand_over(&self, batch: Vec<Item>) -> Option<Vec<Item>> {
        match self.events.try_send(batch) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(batch)) => Some(batch),
            // The consumer is gone; the next reserve() notices and ends.
            Err(mpsc::error::TrySendError::Closed(batch)) => Some(batch),
        }
    }

    async fn handle(&mut self, frame: BackendFrame) -> Result<FrameResult, ReplicationError> {
        match frame {
            BackendFrame::CopyData(payload) => match proto::parse_replication_message(payload)? {
                ReplicationMessage::XLogData {
                    wal_start,
                    wal_end,
                    send_time,
                    data,
                } => {
                    // Received is "written" for us: the consumer reports
                    // flush/apply once the change is committed in the target.
                    self.positions.write.fetch_max(wal_end.0, Ordering::AcqRel);
                    if let Some(echo) = &mut self.echo
                        && !echo.keep(&data)
                    {
                        return Ok(FrameResult::Nothing);
                    }
                    Ok(FrameResult::Event(ReplicationEvent::XLogData {
                        wal_start,
                        wal_end,
                        send_time,
                        data,
                    }))
                }
                ReplicationMessage::PrimaryKeepalive {
                    wal_end,
                    send_time,
                    reply_requested,
                } => {
                    if reply_requested {
                        self.send_status(false).await?;
                    }
                    Ok(FrameResult::Event(ReplicationEvent::Keepalive {
                        wal_end,
                        send_time,
                    }))
                }
            },
            BackendFrame::Message(Message::CopyDone) => Ok(FrameResult::End(Ok(()))),
            BackendFrame::Message(Message::ErrorResponse(body)) => {
                Ok(FrameResult::End(Err(db_error(&body)?)))
            }
            BackendFrame::Message(Message::NoticeResponse(body)) => {
                log_notice(&body_error(body.fields())?);
                Ok(FrameResult::Nothing)
            }
            BackendFrame::Message(Message::ParameterStatus(_)) => Ok(FrameResult::Nothing),
            BackendFrame::Message(Message::CommandComplete(_) | Message::ReadyForQuery(_)) => {
                Ok(FrameResult::End(Ok(())))
            }
            BackendFrame::Message(_) | BackendFrame::CopyBothResponse => Err(
                ReplicationError::Protocol("unexpected message in the replication stream".into()),
            ),
        }
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), ReplicationError> {
        let status = Feedback(self.positions.clone()).status();
        self.write_buf.clear();
        proto::write_standby_status_update(
            status,
            SystemTime::now(),
            reply_requested,
            &mut self.write_buf,
        );
        self.socket.write_all(&self.write_buf).await?;
        self.socket.flush().await?;
        tracing::trace!(write = %status.write, flush = %status.flush, apply = %status.apply, "standby status update");
        Ok(())
    }

    /// Last status update, CopyDone, Terminate. The walsender processes the
    /// update before it sees Terminate, so confirmed positions are kept.
    async fn finish(&mut self) -> Result<(), ReplicationError> {
        self.send_status(false).await?;
        self.write_buf.clear();
        frontend::copy_done(&mut self.write_buf);
        frontend::terminate(&mut self.write_buf);
        self.socket.write_all(&self.write_buf).await?;
        self.socket.flush().await?;
        // Wait for the server to close the connection: only then has the
        // walsender exited and released the slot, so a caller that restarts
        // at once does not find it "active for PID ..." (55006). Whatever
        // the server still sends meanwhile is discarded; bounded, because a
        // server that never closes must not hang the caller.
        let drain = async {
            let mut sink = BytesMut::with_capacity(64 * 1024);
            loop {
                sink.clear();
                match self.socket.read_buf(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        let _ = self.socket.shutdown().await;
        Ok(())
    }
}

/// How long [`LogicalStream::close`] waits for the server to end the session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_interval_is_a_fraction_of_the_timeout() {
        assert_eq!(
            status_interval_for(Some(Duration::from_secs(60))),
            Duration::from_secs(10)
        );
        assert_eq!(
            status_interval_for(Some(Duration::from_secs(5))),
            Duration::from_secs(2)
        );
        assert_eq!(
            status_interval_for(Some(Duration::from_millis(10))),
            Duration::from_millis(100)
        );
        assert_eq!(status_interval_for(None), Duration::from_secs(10));
    }

    #[test]
    fn receive_timeout_is_the_server_timeout_plus_an_interval() {
        let t = Some(Duration::from_secs(60));
        assert_eq!(
            receive_timeout_for(t, status_interval_for(t)),
            Duration::from_secs(70)
        );
        let t = Some(Duration::from_secs(2));
        assert_eq!(
            receive_timeout_for(t, status_interval_for(t)),
            Duration::from_millis(2800)
        );
        assert_eq!(
            receive_timeout_for(None, status_interval_for(None)),
            Duration::from_secs(70)
        );
    }

    #[test]
    fn feedback_never_moves_backwards() {
        let f = Feedback(Arc::new(Positions::default()));
        f.confirm(Lsn(100));
        f.confirm(Lsn(50));
        f.set_flush(Lsn(10));
        assert_eq!(f.status().flush, Lsn(100));
        assert_eq!(f.status().apply, Lsn(100));
        f.set_write(Lsn(200));
        f.set_apply(Lsn(150));
        assert_eq!(
            f.status(),
            StandbyStatus {
                write: Lsn(200),
                flush: Lsn(100),
                apply: Lsn(150)
            }
        );
    }
}
