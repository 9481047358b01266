//! [`FaultProxy`]: a TCP proxy in front of a server that injects network faults on demand.
//!
//! Clients connect to the proxy's [`url`](FaultProxy::url) instead of the server's; each accepted
//! connection gets its own upstream connection, and bytes are copied both ways. While the proxy runs,
//! a test can:
//!
//! - delay every forwarded chunk, in both directions ([`set_latency`](FaultProxy::set_latency));
//! - close every current connection at once ([`cut_all`](FaultProxy::cut_all)), as a network cut or a
//!   load balancer dropping connections would;
//! - close new connections as soon as they are accepted ([`set_refuse`](FaultProxy::set_refuse)).
//!
//! Runs on tokio: [`FaultProxy::start`] must be called inside a runtime. Every task it spawns ends when
//! the proxy is dropped, and every connection it holds is closed then.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Size of one read from either side: what counts as a "chunk" for the latency.
const CHUNK: usize = 16 * 1024;

/// A fault-injecting TCP proxy on `127.0.0.1:<port>` in front of one upstream address.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    latency_micros: AtomicU64,
    refuse: AtomicBool,
    opened: AtomicUsize,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Conn>>,
}

/// What it takes to close one proxied connection from outside its task.
#[derive(Debug)]
struct Conn {
    task: Option<AbortHandle>,
    /// Handles on the client socket and, once connected, the upstream socket, for `shutdown`.
    sockets: Vec<std::net::TcpStream>,
}

impl Conn {
    fn close(self) {
        for socket in &self.sockets {
            // Already closed by the peer is fine.
            let _ = socket.shutdown(Shutdown::Both);
        }
        if let Some(task) = self.task {
            task.abort();
        }
    }
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_micros.load(Ordering::Relaxed))
    }
}

impl FaultProxy {
    /// Starts a proxy listening on `127.0.0.1:0` (a free port) that forwards to `upstream`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if no loopback port can be bound.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("fault proxy cannot bind 127.0.0.1:0: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("fault proxy cannot set its listener non-blocking: {e}"));
        let addr = listener.local_addr().expect("fault proxy local address");
        let listener = TcpListener::from_std(listener)
            .unwrap_or_else(|e| panic!("fault proxy needs a tokio runtime with I/O enabled: {e}"));
        let shared = Arc::new(Shared {
            upstream,
            latency_micros: AtomicU64::new(0),
            refuse: AtomicBool::new(false),
            opened: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone())).abort_handle();
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// The address clients connect to: `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// The address every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Delays every chunk forwarded from now on, in either direction, by `latency` (zero: none).
    ///
    /// Chunks are delayed from the moment they are read, not one after another, so a burst of small
    /// writes is delayed by `latency` once, as a slow link would, and their order is kept.
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.shared.latency_micros.store(micros, Ordering::Relaxed);
    }

    /// The latency set by [`Self::set_latency`].
    pub fn latency(&self) -> Duration {
        self.shared.latency()
    }

    /// Closes every current connection immediately (both the client's and the upstream socket are shut
    /// down, so both peers see the connection end at once). New connections are still accepted, unless
    /// [`Self::set_refuse`] says otherwise. Returns how many connections were cut.
    pub fn cut_all(&self) -> usize {
        let cut: Vec<Conn> = self.shared.conns().drain().map(|(_, conn)| conn).collect();
        let count = cut.len();
        for conn in cut {
            conn.close();
        }
        count
    }

    /// While `refuse` is true, every new connection is closed as soon as it is accepted, without
    /// connecting upstream. Current connections are not affected.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// How many connections have been opened (accepted and forwarded) so far; refused ones not counted.
    pub fn connections(&self) -> usize {
        self.shared.opened.load(Ordering::SeqCst)
    }

    /// How many proxied connections are open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns().len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // E.g. too many open files: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let Ok((client, handle)) = with_handle(client) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared.opened.fetch_add(1, Ordering::SeqCst);
        // Registered before the task runs, so that `cut_all` also cuts a connection still connecting
        // upstream.
        shared.conns().insert(
            id,
            Conn {
                task: None,
                sockets: vec![handle],
            },
        );
        let task = tokio::spawn(serve(id, client, shared.clone())).abort_handle();
        let mut conns = shared.conns();
        match conns.get_mut(&id) {
            Some(conn) => conn.task = Some(task),
            // Cut (or already finished) before we got here.
            None => task.abort(),
        }
    }
}

/// A second handle on the socket, for shutting it down from outside the task that owns it.
fn with_handle(stream: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let handle = std_stream.try_clone()?;
    Ok((TcpStream::from_std(std_stream)?, handle))
}

/// Connects upstream and copies both ways until either side closes or fails.
async fn serve(id: u64, client: TcpStream, shared: Arc<Shared>) {
    let upstream = match TcpStream::connect(shared.upstream).await {
        Ok(upstream) => upstream,
        Err(_) => {
            shared.conns().remove(&id);
            return;
        }
    };
    let Ok((upstream, handle)) = with_handle(upstream) else {
        shared.conns().remove(&id);
        return;
    };
    match shared.conns().get_mut(&id) {
        Some(conn) => conn.sockets.push(handle),
        // Cut while connecting: `upstream` is dropped (closed) here.
        None => return,
    }
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    // When either direction ends, the whole connection ends: Redis clients never half-close.
    tokio::select! {
        () = forward(client_read, upstream_write, shared.clone()) => {}
        () = forward(upstream_read, client_write, shared.clone()) => {}
    }
    if let Some(conn) = shared.conns().remove(&id) {
        for socket in &conn.sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to`, each chunk written no earlier than its arrival plus the current latency;
/// after `from` ends, the chunks already read are still delivered, then `to` is shut down.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: Arc<Shared>) {
    let (chunks, mut pending) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0; CHUNK];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + shared.latency();
                    if chunks.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = pending.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
