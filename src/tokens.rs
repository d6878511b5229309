//! Personal API tokens: random 256-bit secrets of a login user, shown once and kept only as
//! SHA-256 hashes in a root-only file on the users volume. The proxy accepts one as
//! `Authorization: Bearer TOKEN` or as the HTTP Basic password of its user (so `opencode
//! attach -u alice -p TOKEN` and the SDK work); PID 1 checks it, rate-limited like a password.
//! A token is bound to its user's uid: a user removed and added again does not get it back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::secret::SecretString;

/// Every token begins with this.
pub const PREFIX: &str = "occ_";
/// Hex digits of a token's public id.
const ID_LEN: usize = 12;
/// A token's name: at most this many characters.
pub const MAX_NAME: usize = 64;
/// Tokens one user may hold.
pub const MAX_PER_USER: usize = 50;
/// Default lifetime.
pub const DEFAULT_DAYS: u64 = 90;
/// Longest lifetime (`never` means no expiry).
pub const MAX_DAYS: u64 = 3650;
/// `last_used` is written to the file at most this often per token (seconds).
const USE_WRITE_EVERY: i64 = 300;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("a token name is 1-{MAX_NAME} printable characters")]
    BadName,
    #[error("{0} is not a user who can log in")]
    NoSuchUser(String),
    #[error("no token {0}")]
    NotFound(String),
    #[error("{0} already holds {MAX_PER_USER} tokens; revoke some first")]
    TooMany(String),
    #[error("expiry: {0}")]
    BadExpiry(String),
    #[error("{path}: {message}")]
    Store { path: String, message: String },
}

/// One token as stored (its secret only as a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub user: String,
    /// The user's uid when it was made (a re-created user gets a new uid).
    pub uid: u32,
    pub name: String,
    /// Unix seconds.
    pub created: i64,
    pub expires: Option<i64>,
    pub last_used: Option<i64>,
    /// SHA-256 of the whole token, hex.
    pub hash: String,
}

/// What is shown of a token (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created: i64,
    pub expires: Option<i64>,
    pub last_used: Option<i64>,
    pub expired: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    tokens: Vec<Token>,
}

/// Parse a lifetime: `90d`, `12h`, `30m`, plain days, or `never`.
pub fn parse_expiry(text: &str) -> Result<Option<u64>, TokenError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let secs = if let Ok(days) = t.parse::<u64>() {
        days.checked_mul(86_400)
    } else {
        crate::duration::parse(t)
            .ok()
            .map(|d| d.as_secs())
            .or_else(|| {
                t.strip_suffix('d')
                    .and_then(|d| d.trim().parse::<u64>().ok())
                    .and_then(|d| d.checked_mul(86_400))
            })
    }
    .ok_or_else(|| {
        TokenError::BadExpiry(format!("'{text}' is not a duration (90d, 12h) or never"))
    })?;
    if secs == 0 || secs > MAX_DAYS * 86_400 {
        return Err(TokenError::BadExpiry(format!(
            "'{text}' must be above zero and at most {MAX_DAYS} days"
        )));
    }
    Ok(Some(secs))
}

/// Does `s` have a token's shape (`occ_` + 12 hex + `_` + 43 base64url)?
pub fn looks_like_token(s: &str) -> bool {
    split(s).is_some()
}

/// The public id of a token-shaped string.
pub fn token_id(s: &str) -> Option<&str> {
    split(s)
}

/// The id of a token-shaped string.
fn split(s: &str) -> Option<&str> {
    let rest = s.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == ID_LEN
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(id)
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compare two equal-length strings without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn check_name(name: &str) -> Result<String, TokenError> {
    let n = name.trim();
    // No control characters, and none that reorder or hide text in a terminal's list.
    let hidden = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
    if n.is_empty()
        || n.chars().count() > MAX_NAME
        || n.chars().any(|c| c.is_control() || hidden(c))
    {
        return Err(TokenError::BadName);
    }
    Ok(n.to_string())
}

/// The tokens, in memory and in their file.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    list: Vec<Token>,
    /// last_used values not yet written, by id.
    unsaved_use: BTreeMap<String, i64>,
    /// Why the file could not be read: then nothing is accepted or written.
    broken: Option<String>,
}

impl Tokens {
    /// Read `path` (missing: no tokens yet). A file that does not parse is an error: no
    /// token is accepted then, and nothing is written over it.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let err = |message: String| TokenError::Store {
            path: path.display().to_string(),
            message,
        };
        let list = match std::fs::read(path) {
            Ok(bytes) => {
                let f: FileFormat = serde_json::from_slice(&bytes)
                    .map_err(|e| err(format!("not a tokens file ({e})")))?;
                f.tokens
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Tokens {
            path: path.to_path_buf(),
            list,
            unsaved_use: BTreeMap::new(),
            broken: None,
        })
    }

    /// The file could not be read (`why`): no token is accepted, and nothing is written
    /// over the file until it is fixed and occ-init restarts.
    pub fn refusing(path: &Path, why: &TokenError) -> Tokens {
        Tokens {
            path: path.to_path_buf(),
            list: Vec::new(),
            unsaved_use: BTreeMap::new(),
            broken: Some(why.to_string()),
        }
    }

    /// Write the file atomically, root-only (0600).
    fn save(&mut self) -> Result<(), TokenError> {
        if let Some(why) = &self.broken {
            return Err(TokenError::Store {
                path: self.path.display().to_string(),
                message: format!("not written: {why}"),
            });
        }
        for t in &mut self.list {
            if let Some(at) = self.unsaved_use.remove(&t.id) {
                t.last_used = Some(at);
            }
        }
        self.unsaved_use.clear();
        let err = |e: std::io::Error| TokenError::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let body = serde_json::to_vec_pretty(&FileFormat {
            version: 1,
            tokens: self.list.clone(),
        })
        .map_err(|e| err(std::io::Error::other(e)))?;
        crate::users::store::atomic_write(&self.path, &body).map_err(err)
    }

    /// Make a token for `user` (uid `uid`) named `name`, valid `lifetime` seconds (`None`:
    /// no expiry). Returns what is shown of it and the token itself, once.
    pub fn create(
        &mut self,
        user: &str,
        uid: u32,
        name: &str,
        lifetime: Option<u64>,
        now: i64,
    ) -> Result<(TokenInfo, SecretString), TokenError> {
        let name = check_name(name)?;
        if self.list.iter().filter(|t| t.user == user).count() >= MAX_PER_USER {
            return Err(TokenError::TooMany(user.to_string()));
        }
        let mut raw = [0u8; 38];
        getrandom(&mut raw).map_err(|e| TokenError::Store {
            path: "random".into(),
            message: e.to_string(),
        })?;
        use base64::Engine;
        let id: String = raw[..6].iter().map(|b| format!("{b:02x}")).collect();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[6..]);
        raw.iter_mut().for_each(|b| *b = 0);
        let token = SecretString::new(format!("{PREFIX}{id}_{secret}"));
        let t = Token {
            id: id.clone(),
            user: user.to_string(),
            uid,
            name,
            created: now,
            expires: lifetime.map(|l| now + l as i64),
            last_used: None,
            hash: hash(token.expose()),
        };
        self.list.push(t.clone());
        if let Err(e) = self.save() {
            self.list.retain(|x| x.id != id);
            return Err(e);
        }
        Ok((info(&t, now), token))
    }

    /// Revoke token `id` (of `user` only, when given).
    pub fn revoke(
        &mut self,
        id: &str,
        user: Option<&str>,
        now: i64,
    ) -> Result<TokenInfo, TokenError> {
        let pos = self
            .list
            .iter()
            .position(|t| t.id == id && user.is_none_or(|u| t.user == u))
            .ok_or_else(|| TokenError::NotFound(id.chars().take(ID_LEN + 4).collect()))?;
        let t = self.list.remove(pos);
        if let Err(e) = self.save() {
            self.list.insert(pos, t);
            return Err(e);
        }
        Ok(info(&t, now))
    }

    /// Forget every token of `user` (the account was removed).
    pub fn remove_user(&mut self, user: &str) -> Result<usize, TokenError> {
        let before = self.list.len();
        self.list.retain(|t| t.user != user);
        let n = before - self.list.len();
        if n > 0 {
            self.save()?;
        }
        Ok(n)
    }

    /// What is shown of the tokens (of `user`, when given), oldest first.
    pub fn list(&self, user: Option<&str>, now: i64) -> Vec<TokenInfo> {
        self.list
            .iter()
            .filter(|t| user.is_none_or(|u| t.user == u))
            .map(|t| {
                let mut i = info(t, now);
                if let Some(at) = self.unsaved_use.get(&t.id) {
                    i.last_used = Some(*at);
                }
                i
            })
            .collect()
    }

    /// How many tokens exist.
    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// Check `token`: `Some((user, uid, id))` when it is a stored, unexpired token. Its use is
    /// noted (written out at most every few minutes). Whether its user may still log in is
    /// the caller's check (uid included).
    pub fn check(&mut self, token: &str, now: i64) -> Option<(String, u32, String)> {
        let id = split(token)?;
        let h = hash(token);
        let t = self.list.iter().find(|t| t.id == id && same(&t.hash, &h))?;
        if t.expires.is_some_and(|e| now >= e) {
            return None;
        }
        let found = (t.user.clone(), t.uid, t.id.clone());
        let last = self
            .unsaved_use
            .get(&t.id)
            .copied()
            .or(t.last_used)
            .unwrap_or(0);
        self.unsaved_use.insert(t.id.clone(), now);
        if now - last >= USE_WRITE_EVERY {
            if let Err(e) = self.save() {
                log::warn!("tokens: cannot note a use: {e}");
            }
        }
        Some(found)
    }
}

fn info(t: &Token, now: i64) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        user: t.user.clone(),
        name: t.name.clone(),
        created: t.created,
        expires: t.expires,
        last_used: t.last_used,
        expired: t.expires.is_some_and(|e| now >= e),
    }
}

/// Fill `buf` from the kernel's random source.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most buf.len() - done bytes into our buffer.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// The tokens file beside the users manifest.
pub fn default_path(users_file: &Path) -> PathBuf {
    users_file
        .parent()
        .unwrap_or(Path::new("/var/lib/occ"))
        .join("tokens.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Tokens) {
        let d = tempfile::tempdir().unwrap();
        let t = Tokens::load(&d.path().join("tokens.json")).unwrap();
        (d, t)
    }

    #[test]
    fn a_token_is_checked_by_hash_and_kept_only_as_one() {
        let (d, mut s) = store();
        let (info, tok) = s.create("alice", 1002, "laptop", Some(3600), 100).unwrap();
        assert!(looks_like_token(tok.expose()), "{}", tok.expose());
        assert_eq!(info.user, "alice");
        assert_eq!(
            s.check(tok.expose(), 200),
            Some(("alice".into(), 1002, info.id.clone()))
        );
        // Kept only as a hash, root-only.
        let text = std::fs::read_to_string(d.path().join("tokens.json")).unwrap();
        assert!(!text.contains(tok.expose()));
        let secret = tok.expose().rsplit('_').next().unwrap();
        assert!(!text.contains(secret));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("tokens.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Survives a reload.
        let mut again = Tokens::load(&d.path().join("tokens.json")).unwrap();
        assert!(again.check(tok.expose(), 300).is_some());
        // A changed character, another id, expiry.
        let mut bad = tok.expose().to_string();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(again.check(&bad, 300), None);
        assert_eq!(again.check(tok.expose(), 100 + 3600), None);
        assert_eq!(again.check("occ_", 300), None);
        assert_eq!(again.check("password", 300), None);
    }

    #[test]
    fn revoke_list_and_removed_users() {
        let (_d, mut s) = store();
        let (a, ta) = s.create("alice", 1, "one", None, 0).unwrap();
        let (_b, tb) = s.create("bob", 2, "two", Some(10), 0).unwrap();
        assert_eq!(s.list(Some("alice"), 0).len(), 1);
        assert_eq!(s.list(None, 20).iter().filter(|i| i.expired).count(), 1);
        // bob cannot revoke alice's.
        assert!(matches!(
            s.revoke(&a.id, Some("bob"), 0),
            Err(TokenError::NotFound(_))
        ));
        s.revoke(&a.id, Some("alice"), 0).unwrap();
        assert_eq!(s.check(ta.expose(), 1), None);
        assert_eq!(s.remove_user("bob").unwrap(), 1);
        assert_eq!(s.check(tb.expose(), 1), None);
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn names_and_expiries_are_checked() {
        let (_d, mut s) = store();
        assert_eq!(
            s.create("a", 1, "", None, 0).unwrap_err(),
            TokenError::BadName
        );
        assert_eq!(
            s.create("a", 1, "evil\u{202E}gpj", None, 0).unwrap_err(),
            TokenError::BadName
        );
        assert_eq!(
            s.create("a", 1, "x\ny", None, 0).unwrap_err(),
            TokenError::BadName
        );
        assert_eq!(
            s.create("a", 1, &"n".repeat(65), None, 0).unwrap_err(),
            TokenError::BadName
        );
        assert_eq!(parse_expiry("90d").unwrap(), Some(90 * 86_400));
        assert_eq!(parse_expiry("30").unwrap(), Some(30 * 86_400));
        assert_eq!(parse_expiry("12h").unwrap(), Some(12 * 3600));
        assert_eq!(parse_expiry("never").unwrap(), None);
        for bad in ["0", "soon", "99999d", "-1"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
        for _ in 0..MAX_PER_USER {
            s.create("a", 1, "t", None, 0).unwrap();
        }
        assert!(matches!(
            s.create("a", 1, "t", None, 0),
            Err(TokenError::TooMany(_))
        ));
    }

    #[test]
    fn a_broken_file_is_an_error_not_an_empty_store() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens.json");
        std::fs::write(&p, "{not json").unwrap();
        let e = Tokens::load(&p).unwrap_err();
        assert!(matches!(e, TokenError::Store { .. }));
        let mut s = Tokens::refusing(&p, &e);
        assert!(s.create("a", 1, "t", None, 0).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{not json");
    }
}
