//! TCP connections handed to ractor_cluster as buffered streams, in the clear or through TLS.
//!
//! ractor_cluster's own TCP sessions read each frame with two unbuffered reads (its length,
//! then its body), two system calls per message. Through a read buffer, one call takes every
//! frame that has already arrived, which under load is many. Nodes therefore accept on their
//! member address themselves, and nodes and clients dial through a [`Transport`]; that is also
//! where TLS handshakes run, each under a timeout and off the accept loop, so one peer that
//! stalls its handshake holds up nobody else.

use std::net::SocketAddr;
use std::sync::Arc;

use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClientConnectErr, ClusterBidiStream, NodeServerMessage};
use ractor_cluster::{IncomingEncryptionMode, NodeEventSubscription};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::tls::{CertBook, IdentityCheck, LogLimiter, Tls};

/// Read buffer per connection: a burst of small frames, or a large frame in few calls.
const READ_BUFFER: usize = 64 << 10;

/// A connected TCP stream whose read half is buffered.
struct BufferedTcp {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
}

impl ClusterBidiStream for BufferedTcp {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = self.stream.into_split();
        // ractor_cluster batches its writes itself and flushes once per batch.
        (
            Box::new(BufReader::with_capacity(READ_BUFFER, read)),
            Box::new(write),
        )
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local.to_string())
    }
}

/// A TLS stream; its halves share a lock, which plain TCP's do not need.
struct TlsTcp<S> {
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> ClusterBidiStream for TlsTcp<S> {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = tokio::io::split(self.stream);
        (
            Box::new(BufReader::with_capacity(READ_BUFFER, read)),
            Box::new(write),
        )
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local.to_string())
    }
}

fn hand_over(
    server: &ActorRef<NodeServerMessage>,
    stream: Box<dyn ClusterBidiStream>,
    incoming: bool,
) -> Result<(), ClientConnectErr> {
    server.cast(NodeServerMessage::ConnectionOpenedExternal {
        stream,
        is_server: incoming,
    })?;
    Ok(())
}

/// Hands a connected plain stream to `server` as a new session: `incoming` for one it
/// accepted, otherwise one it dialed.
fn open(
    server: &ActorRef<NodeServerMessage>,
    stream: TcpStream,
    incoming: bool,
) -> Result<(), ClientConnectErr> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    let stream = Box::new(BufferedTcp {
        stream,
        peer,
        local,
    });
    hand_over(server, stream, incoming)
}

/// How a process's cluster links run: plain TCP, or mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    tls: Option<Arc<Tls>>,
    book: Arc<CertBook>,
    log: Arc<LogLimiter>,
}

impl Transport {
    /// Links in the clear (authenticated by the cookie alone).
    pub fn plain() -> Transport {
        Transport::default()
    }

    /// Links through `tls`.
    pub fn tls(tls: Arc<Tls>) -> Transport {
        Transport {
            tls: Some(tls),
            ..Transport::default()
        }
    }

    /// True with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS setup, when on: the Redis and metrics listeners serve the same certificate.
    pub fn tls_setup(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// What ractor_cluster's own listener accepts: with TLS, no handshake at all, since
    /// sessions must come through [`Transport::accept`], which checks who they are.
    pub fn node_server_mode(&self) -> Option<IncomingEncryptionMode> {
        self.tls
            .as_ref()
            .map(|_| IncomingEncryptionMode::Tls(crate::tls::refusing_acceptor()))
    }

    /// The session-event subscription that disconnects accepted sessions claiming a member
    /// their certificate does not name; `None` without TLS.
    pub fn identity_check(&self) -> Option<Box<dyn NodeEventSubscription>> {
        self.tls.as_ref().map(|_| {
            Box::new(IdentityCheck {
                book: self.book.clone(),
                log: self.log.clone(),
            }) as Box<dyn NodeEventSubscription>
        })
    }

    /// Hands a stream dialled to member `member` (`None`: a node whose id is not known yet) to
    /// `server`, after a TLS handshake that checks the node's certificate when TLS is on.
    pub async fn dialled(
        &self,
        server: &ActorRef<NodeServerMessage>,
        stream: TcpStream,
        member: Option<&str>,
    ) -> Result<(), ClientConnectErr> {
        let Some(tls) = &self.tls else {
            return open(server, stream, false);
        };
        stream.set_nodelay(true)?;
        let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
        let (stream, cert) = tls
            .connect(stream, member)
            .await
            .map_err(|e| ClientConnectErr::Encryption(std::io::Error::other(e)))?;
        if member.is_none() {
            // Checked against the name its session claims, once that is known.
            self.book.insert(peer.to_string(), cert);
        }
        hand_over(
            server,
            Box::new(TlsTcp {
                stream,
                peer,
                local,
            }),
            false,
        )
    }

    /// Dials member `member` at `addr` and hands the connection to `server`.
    pub async fn connect(
        &self,
        server: &ActorRef<NodeServerMessage>,
        addr: SocketAddr,
        member: &str,
    ) -> Result<(), ClientConnectErr> {
        let stream = TcpStream::connect(addr).await?;
        self.dialled(server, stream, Some(member)).await
    }

    /// Accepts connections on `listener` for `server` until the returned handle is dropped.
    pub fn accept(&self, listener: TcpListener, server: ActorRef<NodeServerMessage>) -> Accepting {
        Accepting(tokio::spawn(serve(listener, server, self.clone())))
    }

    /// Starts a session for an accepted connection; with TLS, in its own task, so a
    /// handshake that stalls (until the timeout) holds up no other connection.
    fn accepted(
        &self,
        server: &ActorRef<NodeServerMessage>,
        stream: TcpStream,
    ) -> Result<(), ClientConnectErr> {
        let Some(tls) = self.tls.clone() else {
            return open(server, stream, true);
        };
        stream.set_nodelay(true)?;
        let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
        let (server, book, log) = (server.clone(), self.book.clone(), self.log.clone());
        tokio::spawn(async move {
            match tls.accept(stream).await {
                Ok((stream, cert)) => {
                    book.insert(peer.to_string(), cert);
                    let stream = Box::new(TlsTcp {
                        stream,
                        peer,
                        local,
                    });
                    if let Err(e) = hand_over(&server, stream, true) {
                        tracing::debug!(error = %e, "node server gone before the session started");
                    }
                }
                Err(e) => {
                    if let Some(held) = log.allow(&peer.ip().to_string()) {
                        tracing::warn!(%peer, since_last = held, "connection refused: {e}");
                    }
                }
            }
        });
        Ok(())
    }
}

/// The task accepting a node's connections; dropping it stops accepting (and closes the
/// listening socket), however the node stops, even partway through starting.
pub struct Accepting(tokio::task::JoinHandle<()>);

impl Drop for Accepting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(listener: TcpListener, server: ActorRef<NodeServerMessage>, transport: Transport) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match transport.accepted(&server, stream) {
                Ok(()) => {}
                // The peer went away before the session started.
                Err(ClientConnectErr::Socket(e)) => {
                    tracing::debug!(error = %e, "accepted connection dropped");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node server gone; no longer accepting");
                    return;
                }
            },
            // Per-connection failures (a peer that reset, out of descriptors for a moment):
            // the listener itself is still good.
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
