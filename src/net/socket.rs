//! Opening one host's socket: TCP with keepalives and `TCP_USER_TIMEOUT`,
//! or a unix socket; then TLS as `sslmode` says. Both kinds of session
//! (replication and SQL) get their socket here, so they follow the same
//! rules.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::params::NetParams;
use tokio_postgres::config::Host;

use super::Target;
use crate::tls::{SslMode, TlsError, TlsSettings};

/// The byte stream under a connection.
pub enum Socket {
    Plain(Raw),
    Tls(Box<tokio_rustls::client::TlsStream<Raw>>),
}

/// A TCP or unix stream that can leave the runtime's reactor for a while
/// ([`Socket::detach`]).
///
/// tokio registers a socket with epoll edge-triggered, and Linux signals an
/// edge for every segment that arrives, read or not. The walsender flushes
/// each message on its own, so a registered replication socket wakes the
/// runtime's thread once per message even while the reader has decided not
/// to read for a few milliseconds: at 8,000 changes a second, 20,000
/// `epoll_wait` returns a second for 460 reads. Detached, the socket wakes
/// nobody; arriving bytes wait in the kernel's buffer until it is attached
/// and read again.
pub enum Raw {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Out of the reactor (non-blocking, as tokio left it).
    DetachedTcp(std::net::TcpStream),
    DetachedUnix(std::os::unix::net::UnixStream),
    /// Lost while moving in or out of the reactor (the error was returned).
    Gone,
}

impl Raw {
    fn detach(&mut self) -> io::Result<()> {
        *self = match std::mem::replace(self, Raw::Gone) {
            Raw::Tcp(s) => Raw::DetachedTcp(s.into_std()?),
            Raw::Unix(s) => Raw::DetachedUnix(s.into_std()?),
            other => other,
        };
        Ok(())
    }

    /// Back into the reactor of the runtime this runs on.
    fn attach(&mut self) -> io::Result<()> {
        *self = match std::mem::replace(self, Raw::Gone) {
            Raw::DetachedTcp(s) => Raw::Tcp(TcpStream::from_std(s)?),
            Raw::DetachedUnix(s) => Raw::Unix(UnixStream::from_std(s)?),
            other => other,
        };
        Ok(())
    }

    fn gone() -> io::Error {
        io::Error::new(
            io::ErrorKind::NotConnected,
            "the socket was lost while leaving or rejoining the runtime",
        )
    }
}

impl Socket {
    /// Takes the socket out of the runtime's reactor: nothing that arrives
    /// wakes the thread until [`Socket::attach`] (or the next read, which
    /// attaches first). Writes still go out meanwhile. See [`Raw`].
    pub fn detach(&mut self) -> io::Result<()> {
        self.raw().detach()
    }

    pub fn attach(&mut self) -> io::Result<()> {
        self.raw().attach()
    }

    fn raw(&mut self) -> &mut Raw {
        match self {
            Socket::Plain(raw) => raw,
            Socket::Tls(tls) => tls.get_mut().0,
        }
    }
}

/// A socket could not be opened; the text names the step.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(io::Error),
    #[error("the server does not accept TLS, but sslmode={0} requires it")]
    TlsUnavailable(SslMode),
    #[error("{0}")]
    Protocol(String),
}

/// Opens `target`'s socket and negotiates TLS. Unix sockets never use TLS
/// (libpq does not either: the kernel is the channel).
pub async fn open(
    target: &Target,
    params: &NetParams,
    tls: &TlsSettings,
) -> Result<Socket, OpenError> {
    match &target.host {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", target.port));
            Ok(Socket::Plain(Raw::Unix(UnixStream::connect(&path).await?)))
        }
        Host::Tcp(name) => {
            let tcp = match target.addr {
                Some(addr) => {
                    let tcp = TcpStream::connect((addr, target.port)).await?;
                    set_options(&tcp, params)?;
                    tcp
                }
                None => connect_tcp(name, target.port, params).await?,
            };
            negotiate_tls(tls, name, tcp).await
        }
    }
}

/// Connects to the first address of `name` that answers, with the socket
/// options that bound silence.
async fn connect_tcp(name: &str, port: u16, params: &NetParams) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((name, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                set_options(&tcp, params)?;
                return Ok(tcp);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

/// `TCP_NODELAY`, keepalives (`SO_KEEPALIVE`, `TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`, `TCP_KEEPCNT`) and `TCP_USER_TIMEOUT`, through socket2:
/// tokio's and std's sockets set only the first.
pub(crate) fn set_options(tcp: &TcpStream, params: &NetParams) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    match params.keepalives {
        Some(k) => sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count),
        )?,
        None => sock.set_keepalive(false)?,
    }
    if let Some(t) = params.tcp_user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

/// Sends `SSLRequest` and wraps the socket in TLS when the server agrees.
async fn negotiate_tls(
    settings: &TlsSettings,
    host: &str,
    mut tcp: TcpStream,
) -> Result<Socket, OpenError> {
    let mode = settings.mode;
    if mode == SslMode::Disable {
        return Ok(Socket::Plain(Raw::Tcp(tcp)));
    }
    // Build the configuration before talking, so a bad certificate path is
    // reported as such rather than as a handshake failure.
    let tls_config = settings.client_config()?;
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let server_name =
                rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
                    OpenError::Protocol(format!("{host:?} is not a valid TLS server name"))
                })?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
            let tls = connector
                .connect(server_name, Raw::Tcp(tcp))
                .await
                .map_err(OpenError::TlsHandshake)?;
            Ok(Socket::Tls(Box::new(tls)))
        }
        b'N' if mode.requires_tls() => Err(OpenError::TlsUnavailable(mode)),
        b'N' => Ok(Socket::Plain(Raw::Tcp(tcp))),
        other => Err(OpenError::Protocol(format!(
            "unexpected answer {:?} to SSLRequest",
            other as char
        ))),
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reading needs the reactor (a read that finds nothing must be woken):
/// a detached stream attaches first. A write while detached goes straight
/// to the kernel, and attaches only when the kernel's buffer is full.
impl AsyncRead for Raw {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.attach() {
            return Poll::Ready(Err(e));
        }
        match this {
            Raw::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Raw::Unix(s) => Pin::new(s).poll_read(cx, buf),
            _ => Poll::Ready(Err(Raw::gone())),
        }
    }
}

impl AsyncWrite for Raw {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        use std::io::Write;
        let this = self.get_mut();
        let direct = match this {
            Raw::DetachedTcp(s) => Some(s.write(buf)),
            Raw::DetachedUnix(s) => Some(s.write(buf)),
            _ => None,
        };
        match direct {
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Some(done) => return Poll::Ready(done),
            None => {}
        }
        if let Err(e) = this.attach() {
            return Poll::Ready(Err(e));
        }
        match this {
            Raw::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Raw::Unix(s) => Pin::new(s).poll_write(cx, buf),
            _ => Poll::Ready(Err(Raw::gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Raw::Tcp(s) => Pin::new(s).poll_flush(cx),
            Raw::Unix(s) => Pin::new(s).poll_flush(cx),
            // Nothing is buffered above the kernel.
            Raw::DetachedTcp(_) | Raw::DetachedUnix(_) => Poll::Ready(Ok(())),
            Raw::Gone => Poll::Ready(Err(Raw::gone())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.attach() {
            return Poll::Ready(Err(e));
        }
        match this {
            Raw::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Raw::Unix(s) => Pin::new(s).poll_shutdown(cx),
            _ => Poll::Ready(Err(Raw::gone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::net::params::Keepalives;

    /// Detached, a socket still writes, keeps what arrives in the kernel,
    /// and reads it once attached again (a read attaches by itself).
    #[tokio::test]
    async fn a_detached_socket_writes_and_reads_what_arrived_meanwhile() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut socket = Socket::Plain(Raw::Unix(ours));
        socket.detach().unwrap();
        assert!(matches!(socket, Socket::Plain(Raw::DetachedUnix(_))));
        peer.write_all(b"while away").await.unwrap();
        socket.write_all(b"status").await.unwrap();
        socket.flush().await.unwrap();
        // The write went straight to the kernel: still detached.
        assert!(matches!(socket, Socket::Plain(Raw::DetachedUnix(_))));
        let mut got = [0u8; 6];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"status");
        let mut got = [0u8; 10];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"while away");
        assert!(matches!(socket, Socket::Plain(Raw::Unix(_))));
        // Detach and attach again, explicitly, and the stream goes on.
        socket.detach().unwrap();
        socket.attach().unwrap();
        peer.write_all(b"more").await.unwrap();
        let mut got = [0u8; 4];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"more");
    }

    /// The options really reach the kernel (read back with getsockopt).
    #[tokio::test]
    async fn tcp_sockets_carry_keepalives_and_the_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let params = NetParams {
            keepalives: Some(Keepalives {
                idle: Duration::from_secs(7),
                interval: Duration::from_secs(3),
                count: 4,
            }),
            tcp_user_timeout: Some(Duration::from_millis(4500)),
            ..NetParams::default()
        };
        let tcp = connect_tcp("127.0.0.1", port, &params).await.unwrap();
        let s = socket2::SockRef::from(&tcp);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(4500))
        );
        assert!(s.tcp_nodelay().unwrap());
        let off = NetParams {
            keepalives: None,
            ..NetParams::default()
        };
        let tcp = connect_tcp("127.0.0.1", port, &off).await.unwrap();
        assert!(!socket2::SockRef::from(&tcp).keepalive().unwrap());
    }
}
