//! TCP connections handed to ractor_cluster as buffered streams.
//!
//! ractor_cluster's own TCP sessions read each frame with two unbuffered reads (its length,
//! then its body), two system calls per message. Through a read buffer, one call takes every
//! frame that has already arrived, which under load is many. Nodes therefore accept on their
//! member address themselves, and nodes and clients dial through [`open`].

use std::net::SocketAddr;

use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClientConnectErr, ClusterBidiStream, NodeServerMessage};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};

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

/// Hands a connected stream to `server` as a new session: `incoming` for one it accepted,
/// otherwise one it dialed.
pub fn open(
    server: &ActorRef<NodeServerMessage>,
    stream: TcpStream,
    incoming: bool,
) -> Result<(), ClientConnectErr> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    server.cast(NodeServerMessage::ConnectionOpenedExternal {
        stream: Box::new(BufferedTcp {
            stream,
            peer,
            local,
        }),
        is_server: incoming,
    })?;
    Ok(())
}

/// Dials `addr` and hands the connection to `server`.
pub async fn connect(
    server: &ActorRef<NodeServerMessage>,
    addr: SocketAddr,
) -> Result<(), ClientConnectErr> {
    let stream = TcpStream::connect(addr).await?;
    open(server, stream, false)
}

/// The task accepting a node's connections; dropping it stops accepting (and closes the
/// listening socket), however the node stops, even partway through starting.
pub struct Accepting(tokio::task::JoinHandle<()>);

impl Drop for Accepting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts connections on `listener` for `server` until the returned handle is dropped.
pub fn accept(listener: TcpListener, server: ActorRef<NodeServerMessage>) -> Accepting {
    Accepting(tokio::spawn(serve(listener, server)))
}

async fn serve(listener: TcpListener, server: ActorRef<NodeServerMessage>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match open(&server, stream, true) {
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
