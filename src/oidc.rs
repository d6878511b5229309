//! Single sign-on, PID 1's side: which container user a verified identity from the OpenID
//! provider becomes (a pure decision over the identity, the allowed groups, the user's state
//! and her pinned `sub`), and the pins themselves: the first `sub` that signed in as each user,
//! kept root-only beside the manifest, so a later identity with the same name is refused.
//! The protocol (discovery, code flow, ID token checks, device flow) is the proxy's:
//! [`crate::proxy::oidc`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A verified identity, as the proxy hands it to PID 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub issuer: String,
    pub sub: String,
    /// The configured username claim's value.
    pub username: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What the identity's user is here now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    /// A login user who can log in.
    Active,
    /// Exists but is locked (or not a login user).
    Locked,
    Missing,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// Sign in as this existing user (pin the `sub` if it is the first).
    Existing(String),
    /// Create this user (no usable password), pin, sign in.
    Create(String),
    Refused(Refusal),
}

/// Why an identity gets no session; the text is shown to the person and logged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("the provider sent no '{0}' claim, so there is no user name to sign in as")]
    NoUsername(String),
    #[error("the provider names you '{0}', which is not a valid user name here")]
    BadName(String),
    #[error("your account is not in a group allowed here ({0})")]
    NotInGroup(String),
    #[error("there is no user {0} in this container; ask an admin to run `occ-init user add {0}`")]
    UnknownUser(String),
    #[error("the user {0} is locked")]
    Locked(String),
    #[error("the user {0} is bound to another identity at the provider")]
    OtherIdentity(String),
}

impl Refusal {
    /// A stable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoUsername(_) => "no_username",
            Refusal::BadName(_) => "bad_name",
            Refusal::NotInGroup(_) => "not_in_group",
            Refusal::UnknownUser(_) => "unknown_user",
            Refusal::Locked(_) => "locked",
            Refusal::OtherIdentity(_) => "other_identity",
        }
    }
}

/// The pinned identity of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub issuer: String,
    pub sub: String,
}

/// Decide. `state` is that of the user the username claim names; `pinned` her pin, if any.
pub fn decide(
    id: &Identity,
    username_claim: &str,
    allowed_groups: &[String],
    state: impl Fn(&str) -> UserState,
    pinned: impl Fn(&str) -> Option<Pin>,
    create_users: bool,
) -> Mapping {
    let Some(name) = id
        .username
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return Mapping::Refused(Refusal::NoUsername(username_claim.to_string()));
    };
    if crate::manifest::check_name(name).is_err() {
        return Mapping::Refused(Refusal::BadName(name.chars().take(64).collect()));
    }
    if !allowed_groups.is_empty() && !id.groups.iter().any(|g| allowed_groups.contains(g)) {
        return Mapping::Refused(Refusal::NotInGroup(allowed_groups.join(", ")));
    }
    if let Some(p) = pinned(name) {
        if p.issuer != id.issuer || p.sub != id.sub {
            return Mapping::Refused(Refusal::OtherIdentity(name.to_string()));
        }
    }
    match state(name) {
        UserState::Active => Mapping::Existing(name.to_string()),
        UserState::Locked => Mapping::Refused(Refusal::Locked(name.to_string())),
        UserState::Missing if create_users => Mapping::Create(name.to_string()),
        UserState::Missing => Mapping::Refused(Refusal::UnknownUser(name.to_string())),
    }
}

#[derive(Debug, Error)]
#[error("{path}: {message}")]
pub struct PinsError {
    pub path: String,
    pub message: String,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsFile {
    version: u32,
    pins: BTreeMap<String, Pin>,
}

/// The pins, in memory and in their file (0600, written atomically).
#[derive(Debug)]
pub struct Pins {
    path: PathBuf,
    pins: BTreeMap<String, Pin>,
    /// The file could not be read: nobody signs in by OIDC (a pin could be lost).
    pub broken: Option<String>,
}

impl Pins {
    pub fn load(path: &Path) -> Pins {
        let (pins, broken) = match std::fs::read(path) {
            Ok(b) => match serde_json::from_slice::<PinsFile>(&b) {
                Ok(f) => (f.pins, None),
                Err(e) => (BTreeMap::new(), Some(format!("not a pins file ({e})"))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), None),
            Err(e) => (BTreeMap::new(), Some(e.to_string())),
        };
        Pins {
            path: path.to_path_buf(),
            pins,
            broken,
        }
    }

    pub fn get(&self, user: &str) -> Option<Pin> {
        self.pins.get(user).cloned()
    }

    /// Pin `user` to `pin` (kept when she has one already).
    pub fn pin(&mut self, user: &str, pin: Pin) -> Result<(), PinsError> {
        if self.pins.contains_key(user) {
            return Ok(());
        }
        self.pins.insert(user.to_string(), pin);
        self.save().inspect_err(|_| {
            self.pins.remove(user);
        })
    }

    /// Forget `user`'s pin (the account was removed).
    pub fn remove(&mut self, user: &str) -> Result<(), PinsError> {
        if self.pins.remove(user).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), PinsError> {
        let err = |message: String| PinsError {
            path: self.path.display().to_string(),
            message,
        };
        if let Some(b) = &self.broken {
            return Err(err(format!("not written: {b}")));
        }
        let body = serde_json::to_vec_pretty(&PinsFile {
            version: 1,
            pins: self.pins.clone(),
        })
        .map_err(|e| err(e.to_string()))?;
        crate::users::store::atomic_write(&self.path, &body).map_err(|e| err(e.to_string()))
    }
}

/// The pins file beside the users manifest.
pub fn default_pins_path(users_file: &Path) -> PathBuf {
    users_file
        .parent()
        .unwrap_or(Path::new("/var/lib/occ"))
        .join("oidc.json")
}

/// Read the client secret: a regular file of at most 4 KiB, trimmed; never empty.
pub fn read_secret(path: &Path) -> Result<crate::secret::SecretString, String> {
    let bytes = crate::tls::read_file(path).map_err(|e| e.to_string())?;
    if bytes.len() > 4096 {
        return Err(format!("{}: larger than 4 KiB", path.display()));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("{}: not UTF-8", path.display()))?
        .trim();
    if text.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(crate::secret::SecretString::new(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: Option<&str>, sub: &str, groups: &[&str]) -> Identity {
        Identity {
            issuer: "https://idp".into(),
            sub: sub.into(),
            username: name.map(str::to_string),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn users(name: &str) -> UserState {
        match name {
            "alice" => UserState::Active,
            "carol" => UserState::Locked,
            _ => UserState::Missing,
        }
    }

    #[test]
    fn identities_map_onto_users_or_are_refused_with_the_reason() {
        let none = |_: &str| None;
        let devs = vec!["devs".to_string()];
        let d = |i: &Identity, allowed: &[String], create: bool| {
            decide(i, "preferred_username", allowed, users, none, create)
        };
        assert_eq!(
            d(&id(Some("alice"), "1", &[]), &[], false),
            Mapping::Existing("alice".into())
        );
        assert_eq!(
            d(&id(Some("alice"), "1", &["devs"]), &devs, false),
            Mapping::Existing("alice".into())
        );
        assert!(matches!(
            d(&id(Some("alice"), "1", &["ops"]), &devs, false),
            Mapping::Refused(Refusal::NotInGroup(_))
        ));
        assert!(matches!(
            d(&id(Some("alice"), "1", &[]), &devs, false),
            Mapping::Refused(Refusal::NotInGroup(_))
        ));
        assert!(matches!(
            d(&id(None, "1", &[]), &[], false),
            Mapping::Refused(Refusal::NoUsername(_))
        ));
        assert!(matches!(
            d(&id(Some("../root"), "1", &[]), &[], true),
            Mapping::Refused(Refusal::BadName(_))
        ));
        assert!(matches!(
            d(&id(Some("carol"), "1", &[]), &[], true),
            Mapping::Refused(Refusal::Locked(_))
        ));
        assert!(matches!(
            d(&id(Some("dave"), "1", &[]), &[], false),
            Mapping::Refused(Refusal::UnknownUser(_))
        ));
        assert_eq!(
            d(&id(Some("dave"), "1", &[]), &[], true),
            Mapping::Create("dave".into())
        );
        let msg = Refusal::UnknownUser("dave".into()).to_string();
        assert!(msg.contains("occ-init user add dave"), "{msg}");
    }

    #[test]
    fn a_pinned_user_takes_only_her_own_identity() {
        let pin = |_: &str| {
            Some(Pin {
                issuer: "https://idp".into(),
                sub: "1".into(),
            })
        };
        let d = |i: &Identity| decide(i, "preferred_username", &[], users, pin, true);
        assert_eq!(
            d(&id(Some("alice"), "1", &[])),
            Mapping::Existing("alice".into())
        );
        assert!(matches!(
            d(&id(Some("alice"), "2", &[])),
            Mapping::Refused(Refusal::OtherIdentity(_))
        ));
        let mut other_issuer = id(Some("alice"), "1", &[]);
        other_issuer.issuer = "https://other".into();
        assert!(matches!(
            d(&other_issuer),
            Mapping::Refused(Refusal::OtherIdentity(_))
        ));
    }

    #[test]
    fn pins_persist_root_only_and_keep_the_first() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("oidc.json");
        let mut pins = Pins::load(&p);
        let first = Pin {
            issuer: "i".into(),
            sub: "1".into(),
        };
        pins.pin("newbie", first.clone()).unwrap();
        pins.pin(
            "newbie",
            Pin {
                issuer: "i".into(),
                sub: "2".into(),
            },
        )
        .unwrap();
        let again = Pins::load(&p);
        assert_eq!(again.get("newbie"), Some(first));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, "{broken").unwrap();
        let mut broken = Pins::load(&p);
        assert!(broken.broken.is_some());
        assert!(broken
            .pin(
                "x",
                Pin {
                    issuer: "i".into(),
                    sub: "3".into()
                }
            )
            .is_err());
    }
}
