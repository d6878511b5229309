//! URLs for single sign-on: an issuer or the public URL must be https, or http on a loopback
//! host only (a provider in tests, a proxy reached on this machine), with no query or fragment.

/// `Ok` when `url` may be used (a path prefix is allowed).
pub fn check(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("'{url}' is not a URL (https://host[:port][/path])"))?;
    let host_port = rest.split('/').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    if host.is_empty() || url.contains(['?', '#', ' ']) || url.chars().any(|c| c.is_control()) {
        return Err(format!(
            "'{url}' is not a URL (https://host[:port][/path], no query)"
        ));
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "'{url}': http is allowed only for a loopback host (127.0.0.1, ::1, localhost); use https"
        )),
        _ => Err(format!("'{url}': must be https")),
    }
}

/// 127.0.0.0/8, ::1 or localhost.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        assert!(check("https://idp.example.com/realms/x").is_ok());
        assert!(check("http://127.0.0.1:4000").is_ok());
        assert!(check("http://[::1]:4000").is_ok());
        assert!(check("http://localhost:3000").is_ok());
        assert!(check("http://idp.example.com")
            .unwrap_err()
            .contains("loopback"));
        assert!(check("ftp://x").is_err());
        assert!(check("idp.example.com").is_err());
        assert!(check("https://idp?x=1").is_err());
        assert!(check("https://").is_err());
    }
}
