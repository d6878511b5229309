//! A deliberately small HTTP/1.1 implementation for the admin socket: one request per
//! connection, `Content-Length` bodies only, strict limits. Parsing is pure (bytes in,
//! request or error out); reading and writing take a stream with timeouts already set.
//!
//! Why not tiny_http: version 0.12 starts an unbounded thread per connection and sets no
//! read/write timeout on accepted unix sockets, so a silent client would hold a thread
//! forever; the admin endpoint must bound both.

use std::io::{self, Read, Write};

/// Largest request (head + body) accepted; larger ones get 413.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest head (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers accepted.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string (after `?`), if any.
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Value of `key` in the query string (`a=1&force=true`).
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Why a request could not be read; each maps to a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request line, header, or length (400).
    Bad(String),
    /// Larger than [`MAX_REQUEST`] (413).
    TooLarge,
    /// Body without Content-Length, e.g. chunked (411).
    LengthRequired,
    /// The client closed, or was silent past the read timeout, before a full request.
    Incomplete,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Bad(_) | HttpError::Incomplete => 400,
            HttpError::TooLarge => 413,
            HttpError::LengthRequired => 411,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse the head; returns the request without body and the declared body length.
pub fn parse_head(head: &[u8]) -> Result<(Request, usize), HttpError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| HttpError::Bad("request head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(HttpError::Bad("malformed request line".into())),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Bad("malformed method".into()));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Bad("unsupported HTTP version".into()));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::Bad("malformed request target".into()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HttpError::Bad("too many headers".into()));
        }
        let (name, value) = l
            .split_once(':')
            .ok_or_else(|| HttpError::Bad("malformed header".into()))?;
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7f) {
            return Err(HttpError::Bad("malformed header name".into()));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let req = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
    };
    if req.header("Transfer-Encoding").is_some() {
        return Err(HttpError::LengthRequired);
    }
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let len = match lengths.as_slice() {
        [] => 0,
        [one] => one
            .parse::<usize>()
            .map_err(|_| HttpError::Bad("invalid Content-Length".into()))?,
        _ => return Err(HttpError::Bad("several Content-Length headers".into())),
    };
    if len > MAX_REQUEST {
        return Err(HttpError::TooLarge);
    }
    Ok((req, len))
}

/// Read one request from a stream (whose timeouts bound how long this may take).
pub fn read_request(stream: &mut impl Read) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::TooLarge);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(if buf.is_empty() {
                    HttpError::Incomplete
                } else {
                    HttpError::Bad("incomplete request".into())
                })
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HttpError::Incomplete),
        }
    };
    let (mut req, len) = parse_head(&buf[..head_end])?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HttpError::Bad("body shorter than Content-Length".into())),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HttpError::Incomplete),
        }
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}

/// A response: status, JSON body, and optional extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Response {
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// Serialize with `Connection: close` (one request per connection).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }

    pub fn write_to(&self, stream: &mut impl Write) -> io::Result<()> {
        stream.write_all(&self.to_bytes())?;
        stream.flush()
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Client side: split a raw response into status code, head (status line and headers) and
/// body. Shared by the admin client and the health probe.
pub fn split_response(raw: &[u8]) -> Result<(u16, String, &[u8]), String> {
    let end = find(raw, b"\r\n\r\n").ok_or("incomplete HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("malformed HTTP status line")?;
    Ok((status, head, &raw[end + 4..]))
}

/// Client side: parse a response into status and body text.
pub fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let (status, _, body) = split_response(raw).map_err(|e| format!("{e} from occ-init"))?;
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut &raw[..])
    }

    #[test]
    fn parses_requests() {
        let r = parse(
            b"POST /v1/users?force=true HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}extra",
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/users");
        assert_eq!(r.query_param("force"), Some("true"));
        assert_eq!(r.query_param("nope"), None);
        assert_eq!(r.body, b"{}");
        assert_eq!(r.header("host"), Some("x"));
        let r = parse(b"GET /v1/status HTTP/1.0\r\n\r\n").unwrap();
        assert!(r.body.is_empty());
    }

    #[test]
    fn rejects_malformed_requests() {
        let cases: &[(&[u8], u16)] = &[
            (b"GARBAGE\r\n\r\n", 400),
            (b"get /x HTTP/1.1\r\n\r\n", 400),
            (b"GET x HTTP/1.1\r\n\r\n", 400),
            (b"GET /x HTTP/2\r\n\r\n", 400),
            (b"GET /x HTTP/1.1 extra\r\n\r\n", 400),
            (b"GET /x HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"GET /x HTTP/1.1\r\nbad name: v\r\n\r\n", 400),
            (b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (b"POST /x HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", 413),
            (b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", 400),
            (b"GET /x HTTP/1.1\r\n", 400),
            (b"", 400),
            (b"\xff\xfe /x HTTP/1.1\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let e = parse(raw).expect_err(&String::from_utf8_lossy(raw));
            assert_eq!(
                e.status(),
                *status,
                "{:?}: {e:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut huge = b"GET /x HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST + 10));
        assert_eq!(parse(&huge).unwrap_err().status(), 413);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        assert!(parse(format!("GET /x HTTP/1.1\r\n{many}\r\n").as_bytes()).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let mut r = Response::json(429, "{\"error\":\"slow down\"}");
        r.headers.push(("Retry-After".into(), "5".into()));
        let bytes = r.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(text.contains("Retry-After: 5\r\n"));
        assert_eq!(
            parse_response(&bytes).unwrap(),
            (429, "{\"error\":\"slow down\"}".to_string())
        );
    }
}
