//! Secrets from the user: passwords read from stdin or a terminal without echo, generated
//! passwords, and a string type that wipes itself and never prints its contents.

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write};

use nix::sys::termios::{self, LocalFlags, SetArg};

/// Minimum length for passwords occ-init accepts.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest secret line read from stdin.
pub const MAX_SECRET_LEN: usize = 4096;

/// A secret string: wiped on drop, `<redacted>` in debug output.
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: String) -> SecretString {
        SecretString(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        // SAFETY: zero bytes keep the String valid UTF-8.
        crate::users::apply::wipe(unsafe { self.0.as_bytes_mut() });
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Check a new plaintext password. Newlines and NUL cannot travel through chpasswd.
pub fn check_password(p: &str) -> Result<(), String> {
    if p.chars().any(|c| c == '\n' || c == '\r' || c == '\0') {
        return Err("password must not contain newlines or NUL".into());
    }
    if p.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!(
            "password must be at least {MIN_PASSWORD_LEN} characters"
        ));
    }
    Ok(())
}

/// Read one line (without its line ending) from `input`.
pub fn read_line<R: BufRead>(mut input: R) -> io::Result<SecretString> {
    let mut line = String::new();
    let mut limited = io::Read::take(&mut input, MAX_SECRET_LEN as u64 + 2);
    limited.read_line(&mut line)?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    if line.len() > MAX_SECRET_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "secret is too long",
        ));
    }
    Ok(SecretString::new(line))
}

/// Prompt on the terminal without echo.
pub fn prompt_hidden(prompt: &str) -> io::Result<SecretString> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let mut out = tty.try_clone()?;
    // Echo off *before* the prompt shows: whatever is typed once it is visible stays hidden.
    let saved = termios::tcgetattr(&tty).map_err(io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    termios::tcsetattr(&tty, SetArg::TCSANOW, &quiet).map_err(io::Error::from)?;
    let shown = write!(out, "{prompt}").and_then(|_| out.flush());
    let line = shown.and_then(|_| read_line(io::BufReader::new(&tty)));
    let _ = termios::tcsetattr(&tty, SetArg::TCSANOW, &saved);
    line
}

/// Ask for a new password twice on the terminal.
pub fn prompt_new_password(user: &str) -> io::Result<SecretString> {
    let first = prompt_hidden(&format!("New password for {user}: "))?;
    let second = prompt_hidden("Repeat it: ")?;
    if first.expose() != second.expose() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "passwords do not match",
        ));
    }
    Ok(first)
}

/// True when stdin is a terminal (interactive prompts are possible).
pub fn stdin_is_tty() -> bool {
    io::stdin().is_terminal()
}

/// A strong random password: 24 characters from a 56-symbol alphabet without look-alikes
/// (about 139 bits), from the kernel's CSPRNG.
pub fn generate_password() -> io::Result<SecretString> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    let mut out = String::with_capacity(24);
    let mut buf = [0u8; 64];
    while out.len() < 24 {
        getrandom(&mut buf)?;
        for &b in &buf {
            // Rejection sampling keeps the distribution uniform.
            let limit = 256 - (256 % ALPHABET.len());
            if (b as usize) < limit && out.len() < 24 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    crate::users::apply::wipe(&mut buf);
    Ok(SecretString::new(out))
}

fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most buf.len() - filled bytes into the buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_line_without_ending() {
        assert_eq!(
            read_line(&b"s3cret pass\r\nnext"[..]).unwrap().expose(),
            "s3cret pass"
        );
        assert_eq!(read_line(&b"x"[..]).unwrap().expose(), "x");
        assert!(read_line(&vec![b'a'; MAX_SECRET_LEN + 10][..]).is_err());
    }

    #[test]
    fn password_rules() {
        assert!(check_password("longenough").is_ok());
        assert!(check_password("with:colon ok").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password("line\nbreak!!").is_err());
    }

    #[test]
    fn generated_passwords_are_long_and_different() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.expose().len(), 24);
        assert_ne!(a.expose(), b.expose());
        assert!(check_password(a.expose()).is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", SecretString::new("hunter22".into())),
            "<redacted>"
        );
    }
}
