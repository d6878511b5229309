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

/// One parsed request: method, target split into path and query, headers, body.
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
    /// The first header called `name` (case-insensitive).
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
    /// The status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Bad(_) | HttpError::Incomplete => 400,
            HttpError::TooLarge => 413,
            HttpError::LengthRequired => 411,
        }
    }
}

/// Parse the head at the start of `buf` (`httparse`, at most [`MAX_HEADERS`] headers):
/// `Ok(None)` while it is incomplete, else the request without body and the head's length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut slots);
    let end = match head.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Bad(format!("malformed request head: {e}"))),
    };
    let (Some(method), Some(target)) = (head.method, head.path) else {
        return Err(HttpError::Bad("malformed request line".into()));
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Bad("malformed method".into()));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Bad("malformed request target".into()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let headers = head
        .headers
        .iter()
        .map(|h| match std::str::from_utf8(h.value) {
            Ok(v) => Ok((h.name.to_string(), v.trim().to_string())),
            Err(_) => Err(HttpError::Bad("header value is not UTF-8".into())),
        })
        .collect::<Result<_, _>>()?;
    let req = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
    };
    Ok(Some((req, end)))
}

/// The body length a parsed head declares: `Content-Length` only (none means 0).
fn body_length(req: &Request) -> Result<usize, HttpError> {
    if req.header("Transfer-Encoding").is_some() {
        return Err(HttpError::LengthRequired);
    }
    let mut lengths = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.as_str());
    let len = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(one), None) => one
            .parse::<usize>()
            .map_err(|_| HttpError::Bad("invalid Content-Length".into()))?,
        (Some(_), Some(_)) => return Err(HttpError::Bad("several Content-Length headers".into())),
    };
    if len > MAX_REQUEST {
        return Err(HttpError::TooLarge);
    }
    Ok(len)
}

/// Read one request from a stream (whose timeouts bound how long this may take). The bytes
/// read for the head (which may hold a password) are wiped before this returns.
pub fn read_request(stream: &mut impl Read) -> Result<Request, HttpError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let req = read_into(stream, &mut buf);
    crate::users::apply::wipe(&mut buf);
    req
}

/// [`read_request`] with `buf` (of [`MAX_HEAD`] bytes) as the head's buffer; the body gets
/// its own buffer of exactly its length, wiped when reading it fails.
fn read_into(stream: &mut impl Read, buf: &mut [u8]) -> Result<Request, HttpError> {
    let mut filled = 0;
    let (mut req, head_end) = loop {
        if let Some(parsed) = parse_head(&buf[..filled])? {
            break parsed;
        }
        if filled == buf.len() {
            return Err(HttpError::TooLarge);
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Err(HttpError::Incomplete),
            Ok(0) => return Err(HttpError::Bad("incomplete request".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HttpError::Incomplete),
        }
    };
    let len = body_length(&req)?;
    let mut body = vec![0u8; len];
    let mut have = (filled - head_end).min(len);
    body[..have].copy_from_slice(&buf[head_end..head_end + have]);
    while have < len {
        let err = match stream.read(&mut body[have..]) {
            Ok(0) => HttpError::Bad("body shorter than Content-Length".into()),
            Ok(n) => {
                have += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => HttpError::Incomplete,
        };
        crate::users::apply::wipe(&mut body);
        return Err(err);
    }
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
    /// A response with a JSON body and no extra headers.
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

    /// Write the whole response to `stream` and flush it.
    pub fn write_to(&self, stream: &mut impl Write) -> io::Result<()> {
        stream.write_all(&self.to_bytes())?;
        stream.flush()
    }
}

/// The reason phrase for a status code this server sends.
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

/// Client side: split a raw response (`httparse`) into status code, head (status line and
/// headers) and body. Shared by the admin client and the health probe.
pub fn split_response(raw: &[u8]) -> Result<(u16, String, &[u8]), String> {
    let mut slots = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let end = match resp.parse(raw) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Err("incomplete HTTP response".into()),
        Err(e) => return Err(format!("malformed HTTP response: {e}")),
    };
    let status = resp.code.ok_or("malformed HTTP status line")?;
    let head = String::from_utf8_lossy(&raw[..end]).trim_end().to_string();
    Ok((status, head, &raw[end..]))
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

    /// A reader that hands out one byte per call, like a slow client.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), out.first_mut()) {
                (Some((b, rest)), Some(o)) => {
                    *o = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn reads_requests_in_pieces_up_to_the_head_limit() {
        let raw = b"POST /v1/x?a=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let r = read_request(&mut Trickle(raw)).unwrap();
        assert_eq!((r.path.as_str(), r.query_param("a")), ("/v1/x", Some("1")));
        assert_eq!(r.body, b"hello");
        let head = |len: usize| {
            let start = b"GET /x HTTP/1.1\r\nX: ";
            let mut h = start.to_vec();
            h.extend(std::iter::repeat_n(b'a', len - start.len() - 4));
            h.extend_from_slice(b"\r\n\r\n");
            h
        };
        assert_eq!(
            parse(&head(MAX_HEAD)).unwrap().header("x").map(str::len),
            Some(MAX_HEAD - 24)
        );
        assert_eq!(parse(&head(MAX_HEAD + 1)).unwrap_err(), HttpError::TooLarge);
        assert_eq!(
            parse(b"GET /x HTTP/1.1\r\nX: \xff\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn splits_responses() {
        assert_eq!(
            split_response(b"HTTP/1.1 204 No Content\r\nA: b\r\n\r\nrest"),
            Ok((204, "HTTP/1.1 204 No Content\r\nA: b".into(), &b"rest"[..]))
        );
        assert!(split_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(split_response(b"garbage\r\n\r\n").is_err());
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
