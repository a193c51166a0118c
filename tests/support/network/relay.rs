//! A TCP relay on loopback in front of the harness's server (its unix
//! socket) that breaks links the ways networks do.
//!
//! ```text
//!  walshift ──TCP 127.0.0.1:port──▶ relay ──unix socket──▶ postgres
//!                                     │ pass:       bytes go on both ways
//!                                     │ black hole: both sockets stay open, every byte is
//!                                     │             dropped, no FIN either way (a middlebox
//!                                     │             that still ACKs: TCP sees a live peer)
//!                                     │ cut:        both sockets closed at once
//! ```
//!
//! A black-holed connection stays so (its server side too: the backend
//! never learns) until the relay is dropped; only new connections pass
//! again, unless [`Relay::black_hole_new`] says otherwise.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const PASS: u8 = 0;
const HOLE: u8 = 1;
const CUT: u8 = 2;

/// One relayed connection's fate, shared by its two pumps.
struct Link {
    state: AtomicU8,
    changed: Notify,
}

impl Link {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[derive(Default)]
struct Shared {
    links: Mutex<Vec<Arc<Link>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    hole_new: AtomicBool,
    accepted: AtomicU64,
}

pub struct Relay {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listens on 127.0.0.1 (a port of its own) and relays to `server`, a
    /// unix socket path.
    pub async fn start(server: PathBuf) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = UnixStream::connect(&server).await else {
                    continue;
                };
                let link = Arc::new(Link {
                    state: AtomicU8::new(if s.hole_new.load(Ordering::SeqCst) {
                        HOLE
                    } else {
                        PASS
                    }),
                    changed: Notify::new(),
                });
                s.links.lock().unwrap().push(link.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = tokio::spawn(pump(cr, sw, link.clone()));
                let down = tokio::spawn(pump(sr, cw, link));
                s.tasks.lock().unwrap().extend([up, down]);
            }
        });
        Relay {
            port,
            shared,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every connection open now becomes a black hole.
    pub fn black_hole_all(&self) -> usize {
        self.set_all(HOLE)
    }

    /// Every connection open now is closed.
    pub fn cut_all(&self) -> usize {
        self.set_all(CUT)
    }

    /// New connections are black holes from the start (`true`): a host
    /// that accepts and never answers.
    pub fn black_hole_new(&self, on: bool) {
        self.shared.hole_new.store(on, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn set_all(&self, state: u8) -> usize {
        let links = self.shared.links.lock().unwrap();
        let mut n = 0;
        for l in links.iter() {
            if l.state.load(Ordering::SeqCst) == PASS {
                n += 1;
            }
            if l.state.load(Ordering::SeqCst) != CUT {
                l.set(state);
            }
        }
        n
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Copies `from` to `to` while the link passes; drops what arrives while it
/// is a black hole (and then keeps both halves open even past EOF, so no
/// FIN goes on); returns, closing both, once it is cut.
async fn pump<R, W>(mut from: R, mut to: W, link: Arc<Link>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    loop {
        let changed = link.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match link.state.load(Ordering::SeqCst) {
            CUT => return,
            HOLE if eof => {
                changed.await;
                continue;
            }
            _ => {}
        }
        tokio::select! {
            r = from.read(&mut buf), if !eof => match r {
                Ok(0) | Err(_) => {
                    if link.state.load(Ordering::SeqCst) == PASS {
                        let _ = to.shutdown().await;
                        return;
                    }
                    eof = true;
                }
                Ok(n) => {
                    if link.state.load(Ordering::SeqCst) == PASS
                        && to.write_all(&buf[..n]).await.is_err()
                    {
                        return;
                    }
                }
            },
            _ = &mut changed => {}
        }
    }
}
