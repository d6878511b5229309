//! The proxy's connections to opencode: each new one is checked to reach a socket of the
//! uid that opencode runs as. A port on 127.0.0.1 is anyone's once its opencode is gone (a
//! crash, an idle stop), and a process of another user that bound it in the moment before
//! the proxy noticed would otherwise get a user's requests — and could answer them with
//! pages of its own in the user's origin.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Which uid must own the listening socket of each upstream port.
#[derive(Clone, Default)]
pub struct Owners(Arc<Mutex<HashMap<u16, u32>>>);

impl Owners {
    /// Requests to `port` go only to a socket of `uid` (from PID 1's word).
    pub fn expect(&self, port: u16, uid: u32) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() > 4096 {
                m.clear();
            }
            m.insert(port, uid);
        }
    }

    fn of(&self, port: u16) -> Option<u32> {
        self.0.lock().ok()?.get(&port).copied()
    }
}

/// Every listener that a connection to 127.0.0.1:`port` can land on is `uid`'s, and there
/// is one (checked once connected: a listener bound after our connection was queued cannot
/// have it, one bound before is seen).
pub fn listeners_are(port: u16, uid: u32) -> Result<(), String> {
    let tables = crate::supervise::probe::tcp_tables();
    let on_port: Vec<u32> = crate::supervise::probe::listeners(&tables)
        .into_iter()
        .filter(|(p, _, _)| *p == port)
        .map(|(_, u, _)| u)
        .collect();
    if on_port.is_empty() {
        return Err(format!("nothing listens on port {port}"));
    }
    on_port.into_iter().try_for_each(|u| check(u, port, uid))
}

/// A listening socket's uid `got` is the one PID 1 named. Pure.
pub fn check(got: u32, port: u16, uid: u32) -> Result<(), String> {
    if got == uid {
        Ok(())
    } else {
        Err(format!(
            "port {port} is held by uid {got}, not by opencode's uid {uid}"
        ))
    }
}

/// Connect to `addr` for a request of PID 1's opencode: refused unless its listening
/// socket is the expected uid's (checked once connected, so a socket bound after the check
/// is not the one connected to).
pub async fn connect_checked(addr: SocketAddr, owners: &Owners) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    verify(addr.port(), owners)?;
    Ok(stream)
}

fn verify(port: u16, owners: &Owners) -> Result<(), String> {
    let uid = owners
        .of(port)
        .ok_or_else(|| format!("no word from occ-init on who owns port {port}"))?;
    listeners_are(port, uid)
}

/// hyper's connector, with the owner check on every new connection.
#[derive(Clone)]
pub struct Checked {
    inner: HttpConnector,
    owners: Owners,
}

impl Checked {
    pub fn new(inner: HttpConnector, owners: Owners) -> Checked {
        Checked { inner, owners }
    }
}

impl tower_service::Service<Uri> for Checked {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let port = uri.port_u16().unwrap_or(80);
        let owners = self.owners.clone();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let conn = connecting.await?;
            verify(port, &owners)?;
            Ok(conn)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expected_uid_may_have_accepted() {
        assert!(check(1001, 4100, 1001).is_ok());
        assert!(check(1002, 4100, 1001).is_err(), "another user's socket");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_is_checked_against_who_accepted_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let owners = Owners::default();
        assert!(
            connect_checked(addr, &owners).await.is_err(),
            "no word from PID 1"
        );
        let me = nix::unistd::geteuid().as_raw();
        owners.expect(addr.port(), me + 1);
        assert!(
            connect_checked(addr, &owners).await.is_err(),
            "someone else's"
        );
        owners.expect(addr.port(), me);
        assert!(connect_checked(addr, &owners).await.is_ok(), "ours");
    }
}
