//! Connections at the proxy, bounded: a cap in all and per client address (an IPv6 /64),
//! counted over plain and upgraded connections alike ([`Slots`]); timeouts on the socket
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

/// The connection counts.
pub struct Slots {
    max: usize,
    /// `None`: no per-client limit (behind a trusted proxy every peer is that proxy).
    max_per_client: Option<usize>,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    refusing: AtomicUsize,
}

/// One connection's place, given back when the last holder (the connection, its requests,
/// an upgraded stream spliced from it) drops it.
pub struct Slot {
    slots: Arc<Slots>,
    client: Option<IpAddr>,
}

impl Slots {
    pub fn new(max: usize, max_per_client: Option<usize>) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            max_per_client: max_per_client.map(|m| m.max(1)),
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            refusing: AtomicUsize::new(0),
        })
    }

    /// Take a place for a connection from `peer`.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Full> {
        if self.total.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(Full::All);
        }
        let mut client = None;
        if let Some(limit) = self.max_per_client {
            let key = client_key(peer);
            let Ok(mut m) = self.per_client.lock() else {
                self.total.fetch_sub(1, Ordering::SeqCst);
                return Err(Full::All);
            };
            let n = m.entry(key).or_insert(0);
            if *n >= limit {
                drop(m);
                self.total.fetch_sub(1, Ordering::SeqCst);
                return Err(Full::Client);
            }
            *n += 1;
            client = Some(key);
        }
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Connections `peer`'s key holds now.
    pub fn of_client(&self, peer: IpAddr) -> usize {
        self.per_client
            .lock()
            .ok()
            .and_then(|m| m.get(&client_key(peer)).copied())
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            if let Ok(mut m) = self.slots.per_client.lock() {
                if let Some(n) = m.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&key);
                    }
                }
            }
        }
        self.slots.total.fetch_sub(1, Ordering::SeqCst);
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
        match Pin::new(&mut self.inner).poll_write(cx, data) {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
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
    fn per_client_and_total_caps_count_every_holder() {
        let slots = Slots::new(3, Some(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some(Full::Client));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(slots.take(mapped).err(), Some(Full::Client), "same client");
        let b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some(Full::All));
        drop(a1);
        assert_eq!(slots.of_client(a), 1);
        let b2 = slots.take(b).unwrap();
        drop((a2, b1, b2));
        assert_eq!(slots.total(), 0);
        assert!(slots.per_client.lock().unwrap().is_empty(), "no leftovers");
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(x), client_key(y));
        assert_ne!(client_key(x), client_key(z));
        let slots = Slots::new(10, Some(1));
        let _x = slots.take(x).unwrap();
        assert!(slots.take(y).is_err());
        assert!(slots.take(z).is_ok());
        let none = Slots::new(10, None);
        let held: Vec<Slot> = (0..10).map(|_| none.take(x).unwrap()).collect();
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
