//! Wake-ups for PID 1's loop from its helper threads (probe worker, admin server): a
//! non-blocking pipe whose read end the loop polls beside the signalfd.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The loop's end: poll it, then [`WakeReader::drain`] before looking at the channel.
pub struct WakeReader(OwnedFd);

/// The helpers' end: [`WakeWriter::wake`] after sending on the channel.
pub struct WakeWriter(OwnedFd);

/// A connected pair (close-on-exec, non-blocking).
pub fn pair() -> std::io::Result<(WakeReader, WakeWriter)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    Ok((WakeReader(r), WakeWriter(w)))
}

impl WakeReader {
    /// Empty the pipe (wake-ups coalesce: the channel holds the actual messages).
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while let Ok(n) = nix::unistd::read(&self.0, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

impl AsFd for WakeReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl WakeWriter {
    /// Make the reader readable. A full pipe already means "wake up", so errors are ignored.
    pub fn wake(&self) {
        let _ = nix::unistd::write(&self.0, b"w");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    #[test]
    fn wakes_and_drains() {
        let (r, w) = pair().unwrap();
        let ready = |r: &WakeReader| {
            let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
        };
        assert!(!ready(&r));
        for _ in 0..10_000 {
            w.wake(); // more than a pipe holds: must not block
        }
        assert!(ready(&r));
        r.drain();
        assert!(!ready(&r));
    }
}
