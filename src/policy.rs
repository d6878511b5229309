//! Bind policy: parsing listen/bind addresses and deciding whether opencode would be
//! reachable from the network. Pure functions, table-tested.

use std::net::{IpAddr, Ipv4Addr};

use thiserror::Error;

use crate::config::AuthMode;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("invalid address '{0}': use an IPv4 or IPv6 address ([::1] or ::1) or 'localhost'")]
    BadAddress(String),
}

/// Parse an address as the host CLI writes it: IPv4, IPv6 with or without brackets, or
/// `localhost`.
pub fn parse_address(text: &str) -> Result<IpAddr, PolicyError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let inner = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    inner
        .parse::<IpAddr>()
        .map_err(|_| PolicyError::BadAddress(text.to_string()))
}

/// Loopback is local; every other address (0.0.0.0, ::, a LAN address) is network-exposed.
pub fn is_exposed(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => !v4.is_loopback(),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        }
    }
}

/// Where exposure is judged: the declared bind address when the host gives one, else the
/// listen host.
pub fn exposure_address<'a>(bind_address: Option<&'a str>, listen_host: &'a str) -> &'a str {
    match bind_address {
        Some(b) if !b.trim().is_empty() => b,
        _ => listen_host,
    }
}

/// What to do with opencode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Local only, or exposed with authentication.
    Launch,
    /// Exposed without authentication, explicitly allowed: launch, warn loudly.
    LaunchWithWarning(String),
    /// Exposed without authentication, not allowed: keep opencode stopped.
    Gate(String),
}

impl Decision {
    pub fn allows_launch(&self) -> bool {
        !matches!(self, Decision::Gate(_))
    }
}

/// The facts the decision is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The address exposure is judged on.
    pub address: String,
    pub exposed: bool,
    /// At least one valid, unlocked user, or a server password file.
    pub authenticated: bool,
    pub allow_unauthenticated_network: bool,
    /// Users exist but nothing checks their passwords (`auth = none`).
    pub users_unchecked: bool,
}

/// Whether something checks passwords in front of opencode: users count only when the proxy
/// or opencode itself checks them; upstream's server password only when opencode gets it.
pub fn authenticated(auth: AuthMode, login_users: usize, server_password: bool) -> bool {
    match auth {
        AuthMode::Proxy => login_users > 0,
        AuthMode::Opencode => login_users > 0 || server_password,
        AuthMode::None => false,
    }
}

/// The bind policy (seed 003): local → launch; exposed with auth → launch; exposed without
/// auth → launch with a warning when allowed, else gate.
pub fn decide(f: &Facts) -> Decision {
    match (f.exposed, f.authenticated, f.allow_unauthenticated_network) {
        (false, _, _) | (true, true, _) => Decision::Launch,
        (true, false, true) => Decision::LaunchWithWarning(format!(
            "opencode is exposed to the network on {} WITHOUT authentication \
             (allow_unauthenticated_network is set): anyone who can reach it can run code here",
            f.address
        )),
        (true, false, false) if f.users_unchecked => Decision::Gate(format!(
            "opencode is not started: it would be exposed to the network on {} and auth = none, \
             so nothing checks the users' passwords. Set OCC_AUTH=proxy (the default), bind to \
             127.0.0.1 (OCC_BIND_ADDRESS), or set OCC_ALLOW_UNAUTHENTICATED_NETWORK=true to run \
             it unprotected",
            f.address
        )),
        (true, false, false) => Decision::Gate(format!(
            "opencode is not started: it would be exposed to the network on {} and no user is \
             configured. Add one with `docker exec <container> occ-init user add NAME` (opencode \
             then starts at once), bind to 127.0.0.1 (OCC_BIND_ADDRESS), or set \
             OCC_ALLOW_UNAUTHENTICATED_NETWORK=true to run it unprotected",
            f.address
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table() {
        // (address, users configured, allowed) → launch / warn / gate
        let table = [
            ("127.0.0.1", false, false, "launch"),
            ("127.0.0.1", true, false, "launch"),
            ("localhost", false, true, "launch"),
            ("[::1]", false, false, "launch"),
            ("0.0.0.0", true, false, "launch"),
            ("0.0.0.0", true, true, "launch"),
            ("0.0.0.0", false, true, "warn"),
            ("0.0.0.0", false, false, "gate"),
            ("::", false, false, "gate"),
            ("[::]", false, true, "warn"),
            ("192.168.1.5", false, false, "gate"),
            ("192.168.1.5", true, false, "launch"),
        ];
        for (addr, auth, allow, want) in table {
            let exposed = is_exposed(&parse_address(addr).unwrap());
            let d = decide(&Facts {
                address: addr.into(),
                exposed,
                authenticated: auth,
                allow_unauthenticated_network: allow,
                users_unchecked: false,
            });
            let got = match d {
                Decision::Launch => "launch",
                Decision::LaunchWithWarning(_) => "warn",
                Decision::Gate(_) => "gate",
            };
            assert_eq!(got, want, "{addr} auth={auth} allow={allow}");
        }
    }

    #[test]
    fn users_count_only_when_something_checks_them() {
        use AuthMode::*;
        let table = [
            (Proxy, 0, false, false),
            (Proxy, 1, false, true),
            (Proxy, 0, true, false),
            (Opencode, 0, false, false),
            (Opencode, 1, false, true),
            (Opencode, 0, true, true),
            (None, 3, false, false),
            (None, 3, true, false),
        ];
        for (mode, users, pw, want) in table {
            assert_eq!(
                authenticated(mode, users, pw),
                want,
                "{mode:?} {users} {pw}"
            );
        }
        let d = decide(&Facts {
            address: "0.0.0.0".into(),
            exposed: true,
            authenticated: false,
            allow_unauthenticated_network: false,
            users_unchecked: true,
        });
        let Decision::Gate(msg) = d else {
            panic!("{d:?}")
        };
        assert!(msg.contains("auth = none"), "{msg}");
    }

    #[test]
    fn gate_message_says_how_to_fix_it() {
        let d = decide(&Facts {
            address: "0.0.0.0".into(),
            exposed: true,
            authenticated: false,
            allow_unauthenticated_network: false,
            users_unchecked: false,
        });
        let Decision::Gate(msg) = d else { panic!() };
        assert!(
            msg.contains("docker exec <container> occ-init user add NAME"),
            "{msg}"
        );
        assert!(msg.contains("0.0.0.0"));
    }

    #[test]
    fn address_table() {
        let table: &[(&str, Option<bool>)] = &[
            ("127.0.0.1", Some(false)),
            ("127.1.2.3", Some(false)),
            ("localhost", Some(false)),
            ("LOCALHOST", Some(false)),
            ("::1", Some(false)),
            ("[::1]", Some(false)),
            ("::ffff:127.0.0.1", Some(false)),
            ("0.0.0.0", Some(true)),
            ("::", Some(true)),
            ("[::]", Some(true)),
            ("192.168.1.10", Some(true)),
            ("10.0.0.1", Some(true)),
            ("fe80::1", Some(true)),
            ("2001:db8::1", Some(true)),
            (" 127.0.0.1 ", Some(false)),
            ("", None),
            ("example.com", None),
            ("256.1.1.1", None),
            ("[::1", None),
            ("::1]", None),
            ("127.0.0.1:3000", None),
            ("[::1]:3000", None),
        ];
        for (text, want) in table {
            let got = parse_address(text).map(|a| is_exposed(&a)).ok();
            assert_eq!(got, *want, "{text:?}");
        }
    }

    #[test]
    fn bad_address_message_says_what_is_accepted() {
        let e = parse_address("nope").unwrap_err().to_string();
        assert!(e.contains("'nope'") && e.contains("localhost"), "{e}");
    }

    #[test]
    fn bind_address_wins_over_listen_host() {
        assert_eq!(exposure_address(Some("127.0.0.1"), "0.0.0.0"), "127.0.0.1");
        assert_eq!(exposure_address(None, "0.0.0.0"), "0.0.0.0");
        assert_eq!(exposure_address(Some(" "), "0.0.0.0"), "0.0.0.0");
    }
}
