//! A small TCP proxy for fault tests: sits between the daemon and a real server and can be
//! switched at run time to simulate network faults.
//!
//! Modes ([`Mode`]):
//! * `Pass`: bytes flow both ways.
//! * `Blackhole`: a network partition / half-open TCP. Every connection stays open and the
//!   proxy keeps reading from both peers (so their writes succeed), but every byte is dropped.
//!   A connection that was blackholed stays dead for good even after `Pass` (its byte stream
//!   lost data, as after a NAT or firewall dropping its state); only new connections carry
//!   traffic again. New connections accepted during a blackhole are dead from the start.
//! * `Refuse`: the listening socket is closed, so new connections get `ECONNREFUSED` (the
//!   server "is down"); existing connections are left alone (combine with [`Proxy::reset`]).
//!
//! [`Proxy::reset`] closes every current connection (both sides see EOF / a reset).
//!
//! The proxy runs on the test's tokio runtime; dropping the [`Proxy`] stops it and closes
//! every connection.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Keep connections open, drop every byte (partition / half-open TCP).
    Blackhole,
    /// Close the listener: new connections are refused.
    Refuse,
}

struct Conn {
    dead: AtomicBool,
}

struct Shared {
    mode: watch::Sender<Mode>,
    /// Bumped by [`Proxy::reset`]; connection tasks end when it changes.
    generation: watch::Sender<u64>,
    conns: Mutex<Vec<Weak<Conn>>>,
    accepted: AtomicU64,
}

/// A running proxy from `addr()` to a fixed target.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            mode: watch::channel(Mode::Pass).0,
            generation: watch::channel(0).0,
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, addr, target, shared.clone()));
        Proxy {
            addr,
            target,
            shared,
            task,
        }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients should connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Switches the mode; `Blackhole` kills every open connection's traffic at once.
    pub fn set(&self, mode: Mode) {
        if mode == Mode::Blackhole {
            let conns = self.shared.conns.lock().expect("proxy lock");
            for c in conns.iter().filter_map(Weak::upgrade) {
                c.dead.store(true, Ordering::SeqCst);
            }
        }
        self.shared.mode.send_replace(mode);
    }

    /// Forward traffic again (new connections; blackholed ones stay dead).
    pub fn pass(&self) {
        self.set(Mode::Pass);
    }

    /// Partition: drop all bytes, keep the connections open.
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    /// Refuse new connections.
    pub fn refuse(&self) {
        self.set(Mode::Refuse);
    }

    /// Closes every current connection (both peers see the connection end).
    pub fn reset(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far (a reconnecting client makes this grow).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        let mut conns = self.shared.conns.lock().expect("proxy lock");
        conns.retain(|w| w.strong_count() > 0);
        conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.reset();
        self.task.abort();
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut mode = shared.mode.subscribe();
    loop {
        if *mode.borrow_and_update() == Mode::Refuse {
            drop(listener);
            while *mode.borrow_and_update() == Mode::Refuse {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            // Rebind the same port (std/tokio set SO_REUSEADDR on Unix listeners).
            listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            continue;
        }
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let conn = Arc::new(Conn {
                    dead: AtomicBool::new(*shared.mode.borrow() == Mode::Blackhole),
                });
                shared.conns.lock().expect("proxy lock").push(Arc::downgrade(&conn));
                let generation = shared.generation.subscribe();
                tokio::spawn(serve(client, target, conn, generation));
            }
        }
    }
}

async fn serve(
    client: TcpStream,
    target: SocketAddr,
    conn: Arc<Conn>,
    mut generation: watch::Receiver<u64>,
) {
    generation.borrow_and_update();
    let server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => return, // the client sees the connection close, like a refused upstream
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, &conn) => {}
        _ = pump(sr, cw, &conn) => {}
        _ = generation.changed() => {}
    }
    // Dropping the halves closes both sockets.
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conn: &Conn,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if conn.dead.load(Ordering::SeqCst) {
            continue; // blackholed: swallow the bytes, keep the connection open
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port.
    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    #[tokio::test]
    async fn proxy_passes_blackholes_resets_and_refuses() {
        let proxy = Proxy::start(echo_server().await).await;

        // Pass.
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            roundtrip(&mut a, b"hello").await.as_deref(),
            Some(&b"hello"[..])
        );

        // Blackhole: the write succeeds, nothing comes back, the connection stays open.
        proxy.blackhole();
        assert_eq!(roundtrip(&mut a, b"lost").await, None);
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut b, b"lost too").await, None);
        assert_eq!(proxy.open_connections(), 2);

        // Healed: old connections stay dead, a new one works.
        proxy.pass();
        assert_eq!(roundtrip(&mut a, b"still dead").await, None);
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            roundtrip(&mut c, b"again").await.as_deref(),
            Some(&b"again"[..])
        );

        // Reset closes every connection: the client reads EOF.
        proxy.reset();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("EOF after reset");
        assert!(matches!(n, Ok(0) | Err(_)), "expected EOF, got {n:?}");

        // Refuse: connect fails; after pass, the same port accepts again.
        proxy.refuse();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(proxy.addr()).await.is_err());
        proxy.pass();
        let mut d = None;
        for _ in 0..50 {
            if let Ok(s) = TcpStream::connect(proxy.addr()).await {
                d = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut d = d.expect("proxy accepts again after refuse");
        assert_eq!(
            roundtrip(&mut d, b"back").await.as_deref(),
            Some(&b"back"[..])
        );
        assert_eq!(proxy.accepted(), 4);
    }
}
