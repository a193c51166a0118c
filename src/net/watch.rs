//! The watchdog of SQL sessions: a request the server has not answered
//! within a bound is looked into, and a session whose link is dead is
//! dropped.
//!
//! [`Watched`] sits between tokio-postgres and the socket, below nothing
//! but the kernel (walshift does TLS itself, in src/net/socket.rs, so the
//! bytes it sees are the protocol's). It counts the requests that each end
//! with one ReadyForQuery (the startup message, Query, Sync) against the
//! ReadyForQuery messages received, notes when bytes last arrived, and
//! takes the backend's pid from BackendKeyData. Nothing is parsed beyond
//! a message's type and length.
//!
//! ```text
//!  tokio-postgres ──▶ Watched ──▶ socket        drive task (owns the Connection)
//!                       │ requests, answers,      │ every tick: unanswered for
//!                       │ last progress, pid ─────┘ `tcp_user_timeout`? probe:
//!                                                   another connection asks
//!                                                   pg_stat_activity for the pid
//!  state 'active' ─▶ the server is still working (a lock wait, a long chunk): wait on
//!  anything else  ─▶ the answer is lost: drop the Connection (and with it the socket),
//!                    remember the pid; the next session to that host terminates it
//! ```
//!
//! Why the probe rather than a plain deadline: a statement may wait on an
//! application's row lock for as long as the application holds it, and a
//! backfill chunk may run long; dropping those would only repeat them. A
//! link through a proxy or a middlebox that still acknowledges TCP but
//! passes nothing is what the kernel's keepalives and `TCP_USER_TIMEOUT`
//! cannot see; the probe can.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one session's socket has seen. Written by the task that drives the
/// connection, read by its watchdog.
#[derive(Debug)]
pub struct Link {
    base: Instant,
    /// Requests sent that end with a ReadyForQuery.
    requests: AtomicU64,
    /// ReadyForQuery messages received.
    answers: AtomicU64,
    /// Milliseconds since `base` of the last sign of progress: bytes
    /// received, or a request sent while none was outstanding.
    progress_ms: AtomicU64,
    /// The backend's pid (BackendKeyData), 0 until known.
    pid: AtomicI32,
}

impl Link {
    pub fn new() -> Arc<Self> {
        Arc::new(Link {
            base: Instant::now(),
            requests: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            pid: AtomicI32::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Requests not answered yet.
    pub fn outstanding(&self) -> u64 {
        self.requests
            .load(Ordering::Acquire)
            .saturating_sub(self.answers.load(Ordering::Acquire))
    }

    /// How long an outstanding request has waited without any byte
    /// arriving; `None` with nothing outstanding.
    pub fn unanswered_for(&self) -> Option<Duration> {
        (self.outstanding() > 0).then(|| {
            Duration::from_millis(
                self.now_ms()
                    .saturating_sub(self.progress_ms.load(Ordering::Acquire)),
            )
        })
    }

    /// Milliseconds stamp of the last progress, to tell whether any came
    /// while a probe ran.
    pub fn progress_stamp(&self) -> u64 {
        self.progress_ms.load(Ordering::Acquire)
    }

    pub fn pid(&self) -> Option<i32> {
        Some(self.pid.load(Ordering::Acquire)).filter(|p| *p != 0)
    }
}

/// Reads a stream of protocol messages a chunk at a time and reports each
/// message's type as its header completes, and its first four body bytes
/// (BackendKeyData's pid) when the body has them.
#[derive(Debug)]
struct Scanner {
    /// The frontend's first message (startup) has no type byte.
    untyped_first: bool,
    header: [u8; 5],
    have: usize,
    /// Body bytes still to skip.
    remaining: usize,
    kind: u8,
    head: [u8; 4],
    head_have: usize,
}

/// One event of the scan.
enum Seen {
    Message(u8),
    /// The first four body bytes of the current message.
    Head(u8, [u8; 4]),
}

impl Scanner {
    fn new(untyped_first: bool) -> Self {
        Scanner {
            untyped_first,
            header: [0; 5],
            have: 0,
            remaining: 0,
            kind: 0,
            head: [0; 4],
            head_have: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Seen)) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                if self.head_have < 4 {
                    let n = (4 - self.head_have).min(bytes.len()).min(self.remaining);
                    self.head[self.head_have..self.head_have + n].copy_from_slice(&bytes[..n]);
                    self.head_have += n;
                    if self.head_have == 4 {
                        seen(Seen::Head(self.kind, self.head));
                    }
                }
                let n = self.remaining.min(bytes.len());
                // The head bytes taken above are part of these n.
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let header_len = if self.untyped_first { 4 } else { 5 };
            let n = (header_len - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < header_len {
                return;
            }
            let (kind, len) = if self.untyped_first {
                self.untyped_first = false;
                let len = u32::from_be_bytes(self.header[..4].try_into().expect("4 bytes"));
                (0u8, len)
            } else {
                let len = u32::from_be_bytes(self.header[1..5].try_into().expect("4 bytes"));
                (self.header[0], len)
            };
            self.have = 0;
            self.kind = kind;
            self.head_have = 0;
            // The length counts itself.
            self.remaining = (len as usize).saturating_sub(4);
            seen(Seen::Message(kind));
        }
    }
}

/// A socket whose traffic a [`Link`] records.
pub struct Watched<S> {
    inner: S,
    link: Arc<Link>,
    sent: Scanner,
    received: Scanner,
}

impl<S> Watched<S> {
    pub fn new(inner: S, link: Arc<Link>) -> Self {
        Watched {
            inner,
            link,
            sent: Scanner::new(true),
            received: Scanner::new(false),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let link = &this.link;
                link.progress();
                this.received.feed(new, |seen| match seen {
                    Seen::Message(b'Z') => {
                        link.answers.fetch_add(1, Ordering::AcqRel);
                    }
                    Seen::Head(b'K', pid) => {
                        link.pid.store(i32::from_be_bytes(pid), Ordering::Release);
                    }
                    _ => {}
                });
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            let link = &this.link;
            this.sent.feed(&buf[..n], |seen| {
                // 0: the startup message; Q: simple query; S: Sync. Each
                // ends with one ReadyForQuery.
                if let Seen::Message(0 | b'Q' | b'S') = seen {
                    if link.outstanding() == 0 {
                        link.progress();
                    }
                    link.requests.fetch_add(1, Ordering::AcqRel);
                }
            });
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A backend walshift stopped talking to because its link went dead: it may
/// still hold locks (idle in transaction, or a walsender holding the slot)
/// until the server notices, which through a middlebox can be never.
#[derive(Debug, Clone)]
struct Abandoned {
    target: String,
    pid: i32,
    application_name: String,
    at: Instant,
}

fn abandoned() -> &'static Mutex<Vec<Abandoned>> {
    static LIST: OnceLock<Mutex<Vec<Abandoned>>> = OnceLock::new();
    LIST.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers backend `pid` on `target`, given up by walshift (at a dead
/// link, or with a session that failed), for [`terminate_abandoned`].
pub fn abandon(target: &str, pid: i32, application_name: &str) {
    let mut list = abandoned().lock().expect("abandoned list");
    if list.iter().any(|a| a.target == target && a.pid == pid) {
        return;
    }
    tracing::info!(
        target_host = target,
        pid,
        session = application_name,
        "session given up; its backend is terminated from the next session if it is still there"
    );
    list.push(Abandoned {
        target: target.to_string(),
        pid,
        application_name: application_name.to_string(),
        at: Instant::now(),
    });
}

/// Whether backends wait to be terminated on `target`.
pub fn any_abandoned(target: &str) -> bool {
    abandoned()
        .lock()
        .expect("abandoned list")
        .iter()
        .any(|a| a.target == target)
}

/// Terminates, through `client` (a new session on `target`), the backends
/// walshift abandoned there that are still running. A pid is only taken
/// for the same backend when its `application_name` matches and it started
/// before walshift abandoned it (measured on the server's own clock, by how
/// long ago that was here), so a reused pid is left alone. Those it could
/// not ask about stay listed for the next session.
pub async fn terminate_abandoned(client: &tokio_postgres::Client, target: &str) {
    let todo: Vec<Abandoned> = {
        let mut list = abandoned().lock().expect("abandoned list");
        let (mine, rest): (Vec<_>, Vec<_>) = list.drain(..).partition(|a| a.target == target);
        *list = rest;
        mine
    };
    let mut keep = Vec::new();
    for a in todo {
        let ago = a.at.elapsed().as_secs_f64();
        let r = client
            .query_opt(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE pid = $1 AND application_name = $2
                   AND backend_start < now() - make_interval(secs => $3)",
                &[&a.pid, &a.application_name, &ago],
            )
            .await;
        match r {
            Ok(Some(row)) => {
                let done: bool = row.get(0);
                tracing::info!(
                    pid = a.pid,
                    session = %a.application_name,
                    terminated = done,
                    "terminated the backend of a dead link"
                );
            }
            Ok(None) => {
                tracing::debug!(pid = a.pid, "the backend of a dead link is already gone")
            }
            Err(e) => {
                tracing::warn!(pid = a.pid, error = %crate::error_policy::pg_message(&e), "cannot terminate the backend of a dead link");
                keep.push(a);
            }
        }
    }
    abandoned().lock().expect("abandoned list").extend(keep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;

    fn kinds(untyped_first: bool, stream: &[u8], chunk: usize) -> (Vec<u8>, Vec<[u8; 4]>) {
        let mut s = Scanner::new(untyped_first);
        let (mut kinds, mut heads) = (Vec::new(), Vec::new());
        for c in stream.chunks(chunk) {
            s.feed(c, |seen| match seen {
                Seen::Message(k) => kinds.push(k),
                Seen::Head(_, h) => heads.push(h),
            });
        }
        (kinds, heads)
    }

    /// Real frontend messages, cut at every size: the startup message has
    /// no type byte, the rest do.
    #[test]
    fn frontend_requests_are_counted_whatever_the_chunks() {
        let mut buf = BytesMut::new();
        frontend::startup_message([("user", "u"), ("database", "d")], &mut buf).unwrap();
        frontend::query("SELECT 1", &mut buf).unwrap();
        frontend::sync(&mut buf);
        frontend::terminate(&mut buf);
        for chunk in 1..buf.len() {
            let (k, _) = kinds(true, &buf, chunk);
            assert_eq!(k, vec![0, b'Q', b'S', b'X'], "chunk {chunk}");
        }
    }

    #[test]
    fn backend_key_data_gives_the_pid() {
        // AuthenticationOk, BackendKeyData(pid 4242, key 7), ReadyForQuery(I).
        let mut b = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
        b.extend_from_slice(&[b'K', 0, 0, 0, 12]);
        b.extend_from_slice(&4242i32.to_be_bytes());
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        for chunk in 1..b.len() {
            let (k, heads) = kinds(false, &b, chunk);
            assert_eq!(k, vec![b'R', b'K', b'Z'], "chunk {chunk}");
            assert!(heads.contains(&4242i32.to_be_bytes()), "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn a_request_is_outstanding_until_ready_for_query() {
        let (client, mut server) = tokio::io::duplex(1024);
        let link = Link::new();
        let mut w = Watched::new(client, link.clone());
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = BytesMut::new();
        frontend::startup_message([("user", "u")], &mut buf).unwrap();
        frontend::query("SELECT 1", &mut buf).unwrap();
        w.write_all(&buf).await.unwrap();
        assert_eq!(link.outstanding(), 2);
        assert!(link.unanswered_for().is_some());
        server
            .write_all(&[b'Z', 0, 0, 0, 5, b'I', b'Z', 0, 0, 0, 5, b'I'])
            .await
            .unwrap();
        let mut sink = [0u8; 12];
        w.read_exact(&mut sink).await.unwrap();
        assert_eq!(link.outstanding(), 0);
        assert_eq!(link.unanswered_for(), None);
    }
}
