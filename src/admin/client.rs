//! The CLI's side of the admin socket: one request, one response, with a deadline, and
//! messages that say what to do when no occ-init is listening.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use super::http::parse_response;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("occ-init is not running as this container's init (no {0}); run this inside the container (docker exec <container> occ-init …), or start the container with occ-init as its ENTRYPOINT")]
    NotRunning(String),
    #[error("occ-init's admin socket {0} refuses connections ({1}); is PID 1 still starting or stopping?")]
    Refused(String, std::io::Error),
    #[error("permission denied on {0}: the admin socket is for root only")]
    Forbidden(String),
    #[error("talking to occ-init over {0}: {1}")]
    Io(String, String),
}

/// How long a refused connection is retried: PID 1 may be binding its socket right now
/// (`docker exec … occ-init user add` just after `docker run`).
const STARTING: Duration = Duration::from_secs(3);

/// Connect, retrying a refused connection for [`STARTING`].
fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let until = std::time::Instant::now() + STARTING;
    loop {
        match UnixStream::connect(socket) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Send one request and return (status, body).
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let shown = socket.display().to_string();
    let mut stream = match connect(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClientError::NotRunning(shown))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ClientError::Forbidden(shown))
        }
        Err(e) => return Err(ClientError::Refused(shown, e)),
    };
    let io = |e: std::io::Error| ClientError::Io(shown.clone(), e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: occ-init\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw).map_err(|e| ClientError::Io(shown.clone(), e))
}
