//! A TCP relay on loopback that injects real latency and can cut a link, for tests of
//! multi-cluster networking between processes (the kernel of the test machines has no
//! `netem`).
//!
//! Each byte is delayed by a one-way delay in each direction without limiting throughput:
//! per direction a reader stamps every chunk it reads with the instant it is due and queues
//! it; a writer sleeps until that instant and writes it. [`Relay::cut`] turns the link into
//! a black hole (connections stay open, nothing gets through, no FIN, no RST), like a dead
//! network path; [`Relay::reset`] closes every connection at once.

use std::future::pending;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Bytes read at once from a socket.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction before the reader waits (up to 64 MiB: the delay never
/// limits throughput, yet a peer that stops reading still pushes back).
const IN_FLIGHT: usize = 1024;

/// A TCP relay on `127.0.0.1:0` (or an address of [`Relay::start_on`]) to a target that
/// delays every byte by a one-way delay in each direction, and can cut or reset the link.
/// Dropping it stops accepting and closes every connection.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// What the relay and its connection tasks share.
struct Shared {
    /// The one-way delay in nanoseconds.
    delay: AtomicU64,
    /// Whether the link is a black hole.
    cut: AtomicBool,
    /// The generation of connections: a connection forwards only while it is the current
    /// one, and closes when it changes (reset, restore).
    epoch: AtomicU64,
    /// The epoch again, to wake the connection tasks when it changes.
    changed: watch::Sender<u64>,
    /// Open connections.
    connections: AtomicUsize,
    /// Bytes forwarded, both directions.
    bytes: AtomicU64,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay.load(Ordering::SeqCst))
    }

    /// Whether a connection of `epoch` may forward now. `cut` is read before `epoch`:
    /// `restore` bumps the epoch before it clears `cut`, so an old connection that sees
    /// the link restored also sees that it is old.
    fn live(&self, epoch: u64) -> bool {
        !self.cut.load(Ordering::SeqCst) && self.epoch.load(Ordering::SeqCst) == epoch
    }

    /// A new generation: every current connection closes.
    fn bump(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.send_replace(epoch);
    }
}

/// Counts a connection open while it lives (including when its task is aborted).
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: &Arc<Shared>) -> Open {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        Open(shared.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Relay {
    /// Starts a relay on `127.0.0.1:0` to `target` with a one-way delay of `one_way`.
    pub async fn start(target: SocketAddr, one_way: Duration) -> Relay {
        Relay::start_on("127.0.0.1:0", target, one_way).await
    }

    /// Starts a relay listening on `listen` (e.g. `"127.0.0.3:0"`) to `target` with a
    /// one-way delay of `one_way`.
    pub async fn start_on(listen: &str, target: SocketAddr, one_way: Duration) -> Relay {
        let listener = TcpListener::bind(listen).await.expect("the relay binds its address");
        let addr = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(Shared {
            delay: AtomicU64::new(nanos(one_way)),
            cut: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            changed: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept(listener, target, shared.clone()));
        Relay { addr, shared, accept }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the one-way delay of the bytes read from now on.
    pub fn set_delay(&self, one_way: Duration) {
        self.shared.delay.store(nanos(one_way), Ordering::SeqCst);
    }

    /// Cuts the link into a black hole: every connection stays open but nothing is
    /// forwarded either way (bytes read meanwhile, and those still in flight, are dropped,
    /// and so is an EOF), and new connections are accepted but forward nothing: a dead
    /// network path, no FIN, no RST.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again, for the connections made from now on: the connections that were
    /// open while the link was cut are closed. Nothing happens when it is not cut.
    pub fn restore(&self) {
        if self.shared.cut.load(Ordering::SeqCst) {
            self.shared.bump();
            self.shared.cut.store(false, Ordering::SeqCst);
        }
    }

    /// Closes every current connection at once (both sides see EOF or a reset). A cut
    /// link stays cut.
    pub fn reset(&self) {
        self.shared.bump();
    }

    /// The connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The bytes forwarded so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The accept task owns the connection tasks: aborting it aborts them all.
        self.accept.abort();
        self.shared.bump();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Accepts connections and relays each in a task of its own until it is aborted.
async fn accept(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let open = Open::new(&shared);
                    let epoch = shared.epoch.load(Ordering::SeqCst);
                    connections.spawn(connection(client, target, shared.clone(), epoch, open));
                }
                // Out of descriptors, or the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection of generation `epoch`, until it ends or its generation does.
async fn connection(client: TcpStream, target: SocketAddr, shared: Arc<Shared>, epoch: u64, _open: Open) {
    let mut changed = shared.changed.subscribe();
    tokio::select! {
        // (The `Ref` of `wait_for` must not live across an await of a spawned task.)
        () = async {
            let _ = changed.wait_for(|e| *e != epoch).await;
        } => {}
        () = forward(client, target, &shared, epoch) => {}
    }
}

/// Connects to the target and forwards both ways until both are closed (or one fails).
async fn forward(client: TcpStream, target: SocketAddr, shared: &Shared, epoch: u64) {
    if !shared.live(epoch) {
        // Accepted on a dead path: never reaches the target.
        return pending().await;
    }
    let Ok(server) = TcpStream::connect(target).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let _ = tokio::try_join!(
        direction(client_read, server_write, shared, epoch),
        direction(server_read, client_write, shared, epoch),
    );
}

/// One direction: bytes read from `from` are written to `to` once delayed, then EOF
/// becomes a shutdown of `to`'s write half.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared, epoch: u64) -> io::Result<()> {
    // A chunk and the instant it is due; `None` is the EOF.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(n) => n,
                Err(e) if shared.live(epoch) => return Err(e),
                // A dead path carries no reset either.
                Err(_) => return pending().await,
            };
            if !shared.live(epoch) {
                if n == 0 {
                    return pending().await;
                }
                continue;
            }
            let due = Instant::now() + shared.delay();
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((due, chunk)).await.is_err() || n == 0 {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            if !shared.live(epoch) {
                match chunk {
                    Some(_) => continue,
                    None => return pending().await,
                }
            }
            match chunk {
                Some(chunk) => {
                    // Counted before the write: once the peer has the bytes, they count.
                    shared.bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    to.write_all(&chunk).await?;
                }
                None => {
                    to.shutdown().await?;
                    return Ok(());
                }
            }
        }
        // The reader failed (and the connection ends anyway).
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1:0.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    async fn connect(relay: &Relay) -> TcpStream {
        let stream = TcpStream::connect(relay.addr()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Duration {
        let start = Instant::now();
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message);
        start.elapsed()
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_takes_twice_the_delay() {
        let relay = Relay::start(echo().await, Duration::from_millis(20)).await;
        let mut stream = connect(&relay).await;
        let took = round_trip(&mut stream, b"hello, far cluster").await;
        assert!(took >= Duration::from_millis(40), "{took:?}");
        assert_eq!(relay.bytes(), 2 * 18);

        relay.set_delay(Duration::from_millis(60));
        let took = round_trip(&mut stream, b"slower").await;
        assert!(took >= Duration::from_millis(120), "{took:?}");

        relay.set_delay(Duration::ZERO);
        let took = round_trip(&mut stream, b"fast").await;
        assert!(took < Duration::from_millis(100), "{took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_does_not_limit_throughput() {
        let relay = Relay::start(echo().await, Duration::from_millis(20)).await;
        let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let stream = connect(&relay).await;
        let (mut r, mut w) = stream.into_split();
        let start = Instant::now();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            // Half-close: the echo server sees EOF through the relay and closes its side.
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await.unwrap();
        let took = start.elapsed();
        writer.await.unwrap();
        assert!(back == data, "the data arrives intact ({} of {} bytes)", back.len(), data.len());
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(relay.bytes(), 2 * data.len() as u64);
        until("the connection to close", || relay.connections() == 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_is_a_black_hole_and_reset_closes() {
        let relay = Relay::start(echo().await, Duration::from_millis(5)).await;
        let mut stream = connect(&relay).await;
        round_trip(&mut stream, b"before").await;

        relay.cut();
        stream.write_all(b"lost").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
        assert!(read.is_err(), "no answer and no EOF while cut: {read:?}");
        // A connection made while cut is accepted but gets nothing either.
        let mut late = connect(&relay).await;
        late.write_all(b"anyone?").await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(300), late.read(&mut buf)).await;
        assert!(read.is_err(), "no answer and no EOF while cut: {read:?}");
        assert_eq!(relay.connections(), 2);

        relay.reset();
        let start = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "EOF or an error after reset: {read:?}");
        assert!(start.elapsed() < Duration::from_millis(200), "{:?}", start.elapsed());
        until("the connections to close", || relay.connections() == 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_forwards_new_connections_and_closes_cut_ones() {
        let relay = Relay::start(echo().await, Duration::ZERO).await;
        let mut old = connect(&relay).await;
        round_trip(&mut old, b"before").await;
        relay.cut();
        relay.restore();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(1), old.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "cut connections close on restore: {read:?}");
        let mut new = connect(&relay).await;
        round_trip(&mut new, b"after").await;
        // Restoring a link that is not cut changes nothing.
        relay.restore();
        round_trip(&mut new, b"still").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listens_on_another_loopback_address() {
        let relay = Relay::start_on("127.0.0.3:0", echo().await, Duration::ZERO).await;
        assert_eq!(relay.addr().ip(), std::net::Ipv4Addr::new(127, 0, 0, 3));
        let mut stream = connect(&relay).await;
        round_trip(&mut stream, b"via 127.0.0.3").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_connections() {
        let relay = Relay::start(echo().await, Duration::from_millis(1)).await;
        assert_eq!(relay.connections(), 0);
        let mut a = connect(&relay).await;
        let mut b = connect(&relay).await;
        round_trip(&mut a, b"a").await;
        round_trip(&mut b, b"b").await;
        assert_eq!(relay.connections(), 2);
        drop(a);
        until("one connection", || relay.connections() == 1).await;
        drop(b);
        until("no connection", || relay.connections() == 0).await;
        let c = connect(&relay).await;
        until("a new connection", || relay.connections() == 1).await;
        drop(relay);
        // The relay closed it on drop.
        let mut c = c;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed when the relay is dropped: {read:?}");
    }
}
