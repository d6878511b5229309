//! Connections at the proxy, bounded: a cap in all and per client address (an IPv6 /64),
//! counted over plain and upgraded connections alike, where connections without a login make
//! room for newcomers ([`Slots`]); timeouts on the socket
//! itself ([`Guarded`]) so a client that stops reading, or leaves a connection silent, loses
//! its slot; and a refusal that says 503 instead of resetting the connection ([`refuse`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A write that makes no progress for this long ends the connection (the client stopped
/// reading: pipelined requests it never collects, a stalled download).
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// A connection with no byte either way for this long ends (an open terminal or event
/// stream left silent; between keep-alive requests hyper's header timeout is shorter).
pub const IDLE: Duration = Duration::from_secs(3600);
/// Refusals answered at once; beyond, a connection over the cap is closed without a word.
const MAX_REFUSING: usize = 256;

/// Whom a per-client limit counts: an IPv4 address, or an IPv6 /64 (one host's share).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The proxy holds `max_connections`.
    All,
    /// This client holds `max_per_client`.
    Client,
}

impl Full {
    pub fn message(self) -> &'static str {
        match self {
            Full::All => "too many connections",
            Full::Client => "too many connections from your address",
        }
    }
}

/// Evictions waiting for their connection to close, at most; beyond, a full proxy refuses
/// (each closes within [`EVICT_GRACE`], so this bounds the extra descriptors).
const MAX_EVICTING: usize = 1024;
/// How long an evicted connection may take to close after its FIN.
pub const EVICT_GRACE: Duration = Duration::from_secs(1);

/// One connection as the counts see it.
struct Held {
    client: IpAddr,
    since: std::time::Instant,
    /// It carried a request with a valid login: never evicted.
    authenticated: bool,
    evicting: bool,
    evict: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    evicting: usize,
    per_client: HashMap<IpAddr, usize>,
    held: HashMap<u64, Held>,
    next: u64,
}

impl Counts {
    /// Ask the oldest connection that never carried a valid login (of `client`, or of
    /// anyone) to close, to make room. False when there is none.
    fn evict_oldest(&mut self, client: Option<IpAddr>) -> bool {
        if self.evicting >= MAX_EVICTING {
            return false;
        }
        let victim = self
            .held
            .iter_mut()
            .filter(|(_, h)| !h.authenticated && !h.evicting)
            .filter(|(_, h)| client.is_none_or(|c| h.client == c))
            .min_by_key(|(_, h)| h.since);
        match victim {
            Some((_, h)) => {
                h.evicting = true;
                h.evict.notify_one();
                self.evicting += 1;
                true
            }
            None => false,
        }
    }

    /// Connections `key` holds, not counting those asked to close.
    fn of(&self, key: IpAddr) -> usize {
        let evicting = self
            .held
            .values()
            .filter(|h| h.evicting && h.client == key)
            .count();
        self.per_client.get(&key).copied().unwrap_or(0) - evicting
    }
}

/// The connection counts. When a cap is reached, the oldest connection that never carried a
/// valid login makes room (of the same client for the per-client cap, of anyone for the
/// total): strangers holding connections, behind the same NAT included, cannot keep a user
/// with a login out. Only when every place is held by logged-in connections is the newcomer
/// refused.
pub struct Slots {
    max: usize,
    /// `None`: no per-client limit (behind a trusted proxy every peer is that proxy).
    max_per_client: Option<usize>,
    counts: Mutex<Counts>,
    refusing: AtomicUsize,
}

/// One connection's place, given back when the last holder (the connection, its requests,
/// an upgraded stream spliced from it) drops it.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    client: IpAddr,
    evict: Arc<tokio::sync::Notify>,
}

impl Slot {
    /// The connection carried a request with a valid login: it is never evicted.
    pub fn authenticated(&self) {
        if let Ok(mut c) = self.slots.counts.lock() {
            if let Some(h) = c.held.get_mut(&self.id) {
                h.authenticated = true;
            }
        }
    }

    /// Notified when the connection must close to make room.
    pub fn evicted(&self) -> Arc<tokio::sync::Notify> {
        self.evict.clone()
    }
}

impl Slots {
    pub fn new(max: usize, max_per_client: Option<usize>) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            max_per_client: max_per_client.map(|m| m.max(1)),
            counts: Mutex::new(Counts::default()),
            refusing: AtomicUsize::new(0),
        })
    }

    /// Take a place for a connection from `peer`, making room if a cap is reached.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Full> {
        let key = client_key(peer);
        let Ok(mut c) = self.counts.lock() else {
            return Err(Full::All);
        };
        if let Some(limit) = self.max_per_client {
            if c.of(key) >= limit && !c.evict_oldest(Some(key)) {
                return Err(Full::Client);
            }
        }
        if c.total - c.evicting >= self.max && !c.evict_oldest(None) {
            return Err(Full::All);
        }
        c.total += 1;
        *c.per_client.entry(key).or_insert(0) += 1;
        let id = c.next;
        c.next += 1;
        let evict = Arc::new(tokio::sync::Notify::new());
        c.held.insert(
            id,
            Held {
                client: key,
                since: std::time::Instant::now(),
                authenticated: false,
                evicting: false,
                evict: evict.clone(),
            },
        );
        Ok(Slot {
            slots: self.clone(),
            id,
            client: key,
            evict,
        })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }

    /// Connections `peer`'s key holds now.
    pub fn of_client(&self, peer: IpAddr) -> usize {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.per_client.get(&client_key(peer)).copied())
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.slots.counts.lock() {
            if c.held.remove(&self.id).is_some_and(|h| h.evicting) {
                c.evicting -= 1;
            }
            if let Some(n) = c.per_client.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    c.per_client.remove(&self.client);
                }
            }
            c.total -= 1;
        }
    }
}

/// Answer a connection that gets no slot with a 503 and close it gently: the request it
/// may already have sent is read and dropped first, so the client sees the answer rather
/// than a reset. At most [`MAX_REFUSING`] at once, each within about a second.
pub async fn refuse(slots: Arc<Slots>, mut stream: tokio::net::TcpStream, why: Full) {
    if slots.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
        slots.refusing.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let body = format!(r#"{{"error":"busy","message":"{}"}}"#, why.message());
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        // Read what has arrived (the request) so closing does not reset the connection.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        stream.write_all(msg.as_bytes()).await?;
        stream.shutdown().await?;
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    slots.refusing.fetch_sub(1, Ordering::SeqCst);
}

/// A client socket with a write-progress timeout and an idle timeout. Stays in place after
/// an upgrade (hyper hands the same socket to the spliced stream).
pub struct Guarded<S> {
    inner: S,
    write_stall: Duration,
    idle: Duration,
    last: Instant,
    stall: Option<Pin<Box<Sleep>>>,
    idle_timer: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, write_stall: Duration, idle: Duration) -> Guarded<S> {
        let now = Instant::now();
        Guarded {
            inner,
            write_stall,
            idle,
            last: now,
            stall: None,
            idle_timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// Pending on the inner socket: has the connection been silent too long?
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let due = self.last + self.idle;
            if Instant::now() >= due {
                return Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle",
                ));
            }
            self.idle_timer.as_mut().reset(due);
        }
        None
    }

    /// After a write: progress resets the timers; pending too long is an error.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                self.stall = None;
                self.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_stall(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    /// A write is pending: has it been stuck too long?
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        let stall = self.write_stall;
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            return Some(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client stopped reading",
            ));
        }
        self.check_idle(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.check_idle(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_stall(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_every_holder_and_strangers_make_room() {
        let slots = Slots::new(3, Some(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let a2 = slots.take(a).unwrap();
        a2.authenticated();
        // a's third connection: its oldest one without a login is asked to close.
        let a3 = slots.take(a).unwrap();
        a3.authenticated();
        assert!(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    tokio::time::timeout(Duration::from_millis(100), a1.evicted().notified())
                        .await
                        .is_ok()
                }),
            "a1 was asked to close"
        );
        drop(a1);
        // Both of a's places hold logins now: nothing to evict, refused.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(slots.take(mapped).err(), Some(Full::Client), "same client");
        let b1 = slots.take(b).unwrap();
        b1.authenticated();
        assert_eq!(
            slots.take(b).err(),
            Some(Full::All),
            "every place holds a login"
        );
        drop(a2);
        assert_eq!(slots.of_client(a), 1);
        let b2 = slots.take(b).unwrap();
        drop((a3, b1, b2));
        assert_eq!(slots.total(), 0);
        let c = slots.counts.lock().unwrap();
        assert!(c.per_client.is_empty() && c.held.is_empty() && c.evicting == 0);
    }

    #[test]
    fn a_full_proxy_makes_room_from_anyone_without_a_login() {
        let slots = Slots::new(2, None);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let x1 = slots.take(x).unwrap();
        let x2 = slots.take(x).unwrap();
        x2.authenticated();
        let y1 = slots.take(y).unwrap();
        y1.authenticated();
        drop(x1);
        assert_eq!(slots.take(y).err(), Some(Full::All));
        drop((x2, y1));
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(x), client_key(y));
        assert_ne!(client_key(x), client_key(z));
        let slots = Slots::new(10, Some(1));
        let x1 = slots.take(x).unwrap();
        x1.authenticated();
        assert!(slots.take(y).is_err());
        assert!(slots.take(z).is_ok());
        let none = Slots::new(10, None);
        let held: Vec<Slot> = (0..10).map(|_| none.take(x).unwrap()).collect();
        held.iter().for_each(Slot::authenticated);
        assert_eq!(none.take(x).err(), Some(Full::All));
        drop(held);
    }

    #[test]
    fn a_client_that_stops_reading_is_cut_off() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, _b) = tokio::io::duplex(1024);
            let mut g = Guarded::new(a, Duration::from_millis(200), Duration::from_secs(60));
            let big = vec![0u8; 1 << 20];
            let t = std::time::Instant::now();
            let r = g.write_all(&big).await;
            assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
            assert!(t.elapsed() < Duration::from_secs(5));
        });
    }

    #[test]
    fn a_silent_connection_ends_and_traffic_keeps_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, mut b) = tokio::io::duplex(1024);
            let mut g = Guarded::new(a, Duration::from_secs(5), Duration::from_millis(300));
            let feeder = tokio::spawn(async move {
                for _ in 0..4 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    b.write_all(b"x").await.unwrap();
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(b);
            });
            let mut buf = [0u8; 1];
            for _ in 0..4 {
                g.read_exact(&mut buf).await.unwrap();
            }
            let t = std::time::Instant::now();
            let e = g.read_exact(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
            assert!(t.elapsed() < Duration::from_secs(2));
            feeder.abort();
        });
    }
}
