//! The public listening sockets PID 1 binds for the proxy, holding both address families:
//! a wildcard host becomes one dual-stack `[::]` socket (IPV6_V6ONLY off), a loopback host
//! both `127.0.0.1` and `[::1]`. Otherwise a process in the container (anything an opencode
//! terminal runs) could bind the other family's port and serve its clients a fake login page.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// One socket to bind: its address and whether it takes IPv6 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub addr: SocketAddr,
    pub v6only: bool,
    /// Without it the others still serve (e.g. `[::1]` where IPv6 is off).
    pub optional: bool,
}

/// What to bind for `host:port`. `None` for a host name that is not an address (bound as
/// given, one socket).
pub fn plan(host: &str, port: u16) -> Option<Vec<Plan>> {
    let h = host.trim_matches(['[', ']']);
    let ip: IpAddr = match h {
        "" | "localhost" => {
            if h.is_empty() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::LOCALHOST.into()
            }
        }
        h => h.parse().ok()?,
    };
    let v4 = |ip: Ipv4Addr, optional| Plan {
        addr: SocketAddr::new(ip.into(), port),
        v6only: false,
        optional,
    };
    let v6 = |ip: Ipv6Addr, v6only, optional| Plan {
        addr: SocketAddr::new(ip.into(), port),
        v6only,
        optional,
    };
    Some(match ip {
        // One dual-stack socket serves both; where IPv6 is missing, IPv4 alone (see `bind`).
        IpAddr::V4(a) if a.is_unspecified() => vec![v6(Ipv6Addr::UNSPECIFIED, false, false)],
        IpAddr::V6(a) if a.is_unspecified() => vec![v6(a, false, false)],
        IpAddr::V4(a) if a.is_loopback() => {
            vec![v4(a, false), v6(Ipv6Addr::LOCALHOST, true, true)]
        }
        IpAddr::V6(a) if a.is_loopback() => {
            vec![v6(a, true, false), v4(Ipv4Addr::LOCALHOST, true)]
        }
        IpAddr::V4(a) => vec![v4(a, false)],
        IpAddr::V6(a) => vec![v6(a, true, false)],
    })
}

/// Bind one planned socket (SO_REUSEADDR like std, close-on-exec, backlog 1024).
fn bind_one(p: &Plan) -> std::io::Result<TcpListener> {
    let domain = if p.addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if p.addr.is_ipv6() {
        s.set_only_v6(p.v6only)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&p.addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Bind the public sockets for `host:port`. A dual-stack wildcard falls back to
/// `0.0.0.0` where the kernel has no IPv6; an optional socket that cannot be bound because
/// its family is missing is skipped (logged). Any other failure is an error: a port taken
/// in either family means someone else could answer there.
pub fn bind(host: &str, port: u16) -> std::io::Result<Vec<TcpListener>> {
    let Some(plans) = plan(host, port) else {
        return Ok(vec![TcpListener::bind((host, port))?]);
    };
    let no_family = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
        )
    };
    let mut out = Vec::new();
    for p in &plans {
        match bind_one(p) {
            Ok(l) => out.push(l),
            Err(e) if no_family(&e) && p.addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
                log::warn!("no IPv6 here ({e}); listening on 0.0.0.0:{port} only");
                out.push(bind_one(&Plan {
                    addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                    v6only: false,
                    optional: false,
                })?);
            }
            Err(e) if no_family(&e) && p.optional => {
                log::debug!("not listening on {}: {e}", p.addr);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A peer address as the limiter and the log should see it: IPv4-mapped IPv6 addresses
/// (from the dual-stack socket) as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_dual_stack_and_loopback_holds_both() {
        let p = plan("0.0.0.0", 3000).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].addr, "[::]:3000".parse().unwrap());
        assert!(!p[0].v6only);
        assert_eq!(plan("::", 1).unwrap()[0].addr, "[::]:1".parse().unwrap());
        assert_eq!(plan("[::]", 1).unwrap()[0].addr, "[::]:1".parse().unwrap());
        let p = plan("127.0.0.1", 5).unwrap();
        assert_eq!(
            p.iter().map(|p| p.addr.to_string()).collect::<Vec<_>>(),
            ["127.0.0.1:5", "[::1]:5"]
        );
        assert!(p[1].v6only && p[1].optional);
        assert_eq!(plan("localhost", 5).unwrap().len(), 2);
        assert_eq!(plan("::1", 5).unwrap().len(), 2);
        assert_eq!(plan("10.1.2.3", 5).unwrap().len(), 1);
        assert_eq!(plan("fd00::1", 5).unwrap().len(), 1);
        assert!(plan("example.internal", 5).is_none());
    }

    #[test]
    fn a_dual_stack_socket_takes_both_families() {
        let ls = bind("0.0.0.0", 0).unwrap();
        assert_eq!(ls.len(), 1);
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        // Neither family's port can be taken by someone else now.
        assert!(TcpListener::bind(("0.0.0.0", port)).is_err());
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            assert!(TcpListener::bind(("::", port)).is_err());
            assert!(std::net::TcpStream::connect(("::1", port)).is_ok());
        }
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert_eq!(
            canonical("::ffff:127.0.0.1".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
