//! The Redis-protocol gateway: every node can listen for RESP2/RESP3 clients (`[resp]`), so
//! redis-cli, redis-benchmark and Redis client libraries reach the same request path as the
//! SDK. One task per connection reads pipelined commands ([`frame`]), runs them ([`commands`])
//! in order and writes their replies back in one go; a semaphore bounds the connections.

pub mod auth;
pub mod commands;
pub mod frame;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::context::NodeContext;
use commands::Session;
use frame::{Limits, Protocol, Reply, encode, parse_command};

/// What plain `GET` answers for a key with several concurrent values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiblingReply {
    /// One of them, the same on every node: the greatest by bytes.
    Pick,
    /// An error naming how many there are and `RINGKV.GET`.
    Error,
}

/// How a node's RESP listener is set up.
#[derive(Debug, Clone)]
pub struct RespSettings {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Connections served at once; more wait for a free slot.
    pub max_connections: usize,
    /// What plain `GET` answers for siblings.
    pub siblings: SiblingReply,
    /// The password clients must `AUTH` with, if any.
    pub password: auth::Password,
    /// Serve over TLS (the node's certificate; no client certificate asked for).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Binds the listener; the error names the address.
pub async fn bind(settings: &RespSettings) -> Result<TcpListener, String> {
    TcpListener::bind(settings.addr)
        .await
        .map_err(|e| format!("cannot listen for RESP on {}: {e}", settings.addr))
}

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, ctx: Arc<NodeContext>, settings: RespSettings) {
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (ctx, settings) = (ctx.clone(), settings.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = stream.set_nodelay(true);
                    let served = match &settings.tls {
                        None => connection(stream, peer, ctx, &settings).await,
                        // The handshake runs in the connection's own task, under a timeout,
                        // so a client that stalls it holds up only its own slot.
                        Some(tls) => match tls.accept_open(stream).await {
                            Ok(stream) => connection(stream, peer, ctx, &settings).await,
                            Err(e) => {
                                tracing::debug!(%peer, "RESP TLS connection refused: {e}");
                                Ok(())
                            }
                        },
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "RESP connection closed");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    ctx: Arc<NodeContext>,
    settings: &RespSettings,
) -> std::io::Result<()> {
    let limits = Limits::default();
    let mut session = Session::new(ctx, settings.siblings, settings.password.clone(), peer);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let mut start = 0;
        // Every complete command in the buffer runs before the replies are written, so a
        // pipelining client gets them in one write.
        loop {
            match parse_command(&buf[start..], &limits) {
                Ok(Some((args, used))) => {
                    start += used;
                    if args.is_empty() {
                        continue;
                    }
                    let reply = session.run(args).await;
                    encode(&reply, session.protocol(), &mut out);
                    if session.closing() {
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reply = Reply::Error(format!("ERR Protocol error: {}", e.0));
                    encode(&reply, session.protocol(), &mut out);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        let old = buf.len();
        buf.resize(old + READ_CHUNK, 0);
        let n = stream.read(&mut buf[old..]).await?;
        buf.truncate(old + n);
        if n == 0 {
            return Ok(());
        }
    }
}

/// The protocol a fresh connection speaks.
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Resp2;
