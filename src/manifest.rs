//! The users manifest (TOML): its format, parsing, and pure validation that reports every
//! problem at once. Knows nothing about files or /etc beyond the facts it is given.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The only manifest format version so far.
pub const VERSION: u32 = 1;
/// Manifests larger than this are refused before parsing.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Login users get uids in this range (Debian/Ubuntu's UID_MIN..UID_MAX minus the top).
pub const UID_MIN: u32 = 1000;
pub const UID_MAX: u32 = 59999;

/// The whole manifest file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    #[serde(default)]
    pub users: Vec<User>,
}

/// One login user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// A shadow crypt string (`$y$…`, `$6$…`), or a locked form (`!…`, `*`).
    pub password_hash: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

// Hashes stay out of debug output (and so out of logs).
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("locked", &self.locked)
            .field("uid", &self.uid)
            .finish()
    }
}

impl Manifest {
    pub fn empty() -> Manifest {
        Manifest {
            version: VERSION,
            users: Vec::new(),
        }
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn user_mut(&mut self, name: &str) -> Option<&mut User> {
        self.users.iter_mut().find(|u| u.name == name)
    }

    /// Users that can log in: present and not locked.
    pub fn active_users(&self) -> impl Iterator<Item = &User> {
        self.users
            .iter()
            .filter(|u| !u.locked && !is_locked_hash(&u.password_hash))
    }

    /// The manifest as TOML text, with a header saying what the file is.
    pub fn to_toml(&self) -> String {
        let body =
            toml::to_string(self).unwrap_or_else(|e| format!("# serialization failed: {e}\n"));
        format!(
            "# occ-init users manifest: login users and their shadow password hashes.\n\
             # Written by occ-init; keep it 0600. Format: docs/users.md (/usr/share/doc/occ-init in the image)\n\n{body}"
        )
    }
}

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The user (by name, or `users[i]` when the name itself is unusable), if any.
    pub user: Option<String>,
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "user {u}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Why a manifest was refused. Carries every problem found, not just the first.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is {0} bytes; the limit is {MAX_BYTES}")]
    TooLarge(usize),
    #[error("manifest is not valid TOML for format version {VERSION}: {0}")]
    Syntax(String),
    #[error("manifest has {} problem(s):\n  {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<Problem>),
}

/// What validation needs to know about the system: existing accounts and reserved names.
#[derive(Debug, Clone, Default)]
pub struct SystemFacts {
    /// name → uid of every account in /etc/passwd.
    pub accounts: HashMap<String, u32>,
    /// Names that are never login users (the service user, built-in image users).
    pub reserved: HashSet<String>,
    /// Group names in /etc/group.
    pub groups: HashSet<String>,
}

impl SystemFacts {
    pub fn with_reserved<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> SystemFacts {
        let mut reserved: HashSet<String> = names.into_iter().map(Into::into).collect();
        reserved.insert("root".into());
        SystemFacts {
            accounts: HashMap::new(),
            reserved,
            groups: HashSet::new(),
        }
    }
}

/// Parse manifest text (size limit, TOML, known fields only). No semantic checks.
pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
    if text.len() > MAX_BYTES {
        return Err(ManifestError::TooLarge(text.len()));
    }
    toml::from_str::<Manifest>(text).map_err(|e| ManifestError::Syntax(toml_error(text, &e)))
}

/// A TOML error as `line N: message`, without the source excerpt toml prints (the excerpt
/// could show a password hash).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

/// Parse and validate in one go.
pub fn load(text: &str, facts: &SystemFacts) -> Result<Manifest, ManifestError> {
    let manifest = parse(text)?;
    let problems = validate(&manifest, facts);
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(ManifestError::Invalid(problems))
    }
}

/// Every problem of a parsed manifest, in file order.
pub fn validate(m: &Manifest, facts: &SystemFacts) -> Vec<Problem> {
    let mut problems = Vec::new();
    if m.version != VERSION {
        problems.push(Problem {
            user: None,
            field: "version",
            message: format!(
                "unsupported version {} (this occ-init reads version {VERSION})",
                m.version
            ),
        });
    }
    let mut seen_names = HashSet::new();
    let mut seen_uids: HashMap<u32, &str> = HashMap::new();
    for (i, u) in m.users.iter().enumerate() {
        let who = if check_name(&u.name).is_ok() {
            u.name.clone()
        } else {
            format!("users[{i}]")
        };
        let mut add = |field, message: String| {
            problems.push(Problem {
                user: Some(who.clone()),
                field,
                message,
            })
        };
        if let Err(msg) = check_name(&u.name) {
            add("name", msg);
        } else {
            if !seen_names.insert(u.name.as_str()) {
                add("name", "duplicate user name".into());
            }
            if facts.reserved.contains(&u.name) {
                add(
                    "name",
                    format!("'{}' is a built-in account, not a login user", u.name),
                );
            } else if let Some(&uid) = facts.accounts.get(&u.name) {
                if !(UID_MIN..=UID_MAX).contains(&uid) {
                    add(
                        "name",
                        format!("'{}' is a system account (uid {uid})", u.name),
                    );
                }
            } else if facts.groups.contains(&u.name) {
                add(
                    "name",
                    format!(
                        "'{}' is an existing group: useradd cannot create a user of that name",
                        u.name
                    ),
                );
            }
        }
        if let Err(msg) = check_hash(&u.password_hash) {
            add("password_hash", msg);
        }
        if let Some(uid) = u.uid {
            if !(UID_MIN..=UID_MAX).contains(&uid) {
                add("uid", format!("{uid} is outside {UID_MIN}..={UID_MAX}"));
            } else if let Some(other) = seen_uids.insert(uid, &u.name) {
                add("uid", format!("{uid} is also given to {other}"));
            } else if let Some((owner, _)) = facts
                .accounts
                .iter()
                .find(|(name, &id)| id == uid && **name != u.name)
            {
                add("uid", format!("{uid} already belongs to account '{owner}'"));
            }
        }
    }
    problems
}

/// Linux user names occ-init accepts: `^[a-z_][a-z0-9_-]{0,31}$`.
pub fn check_name(name: &str) -> Result<(), String> {
    let shown: String = name.escape_debug().take(40).collect();
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > 32 {
        return Err(format!("'{shown}…' is longer than 32 characters"));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "'{shown}' is not a valid user name (lowercase letters, digits, _ and -, starting with a letter or _, at most 32)"
        ))
    }
}

/// True for the locked forms: `!…`, `*`, `!*`, `!!`.
pub fn is_locked_hash(hash: &str) -> bool {
    hash.starts_with('!') || hash == "*"
}

const CRYPT_CHARS: &str = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn all_crypt(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| CRYPT_CHARS.contains(c))
}

/// A well-formed shadow password field: a strong crypt string, or a locked form of one.
pub fn check_hash(hash: &str) -> Result<(), String> {
    if hash.is_empty() {
        return Err("is empty (an empty hash would allow login without a password)".into());
    }
    if let Some(c) = hash
        .chars()
        .find(|c| *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "contains a forbidden character {:?} (':', whitespace and control characters are not allowed)",
            c
        ));
    }
    if matches!(hash, "*" | "!" | "!*" | "!!") {
        return Ok(());
    }
    let crypt = hash.strip_prefix('!').unwrap_or(hash);
    check_crypt(crypt)
}

fn check_crypt(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("is not a well-formed crypt string: {why}"));
    let Some(rest) = s.strip_prefix('$') else {
        return bad("it must start with $id$ ($y$, $6$, $5$, $2b$, $gy$ or $7$)");
    };
    let parts: Vec<&str> = rest.split('$').collect();
    match parts[0] {
        "6" | "5" => {
            let (salt, hash) = match parts.as_slice() {
                [_, rounds, salt, hash] if rounds.starts_with("rounds=") => {
                    if rounds["rounds=".len()..].parse::<u32>().is_err() {
                        return bad("invalid rounds= value");
                    }
                    (*salt, *hash)
                }
                [_, salt, hash] => (*salt, *hash),
                _ => return bad("expected $id$[rounds=N$]salt$hash"),
            };
            let want = if parts[0] == "6" { 86 } else { 43 };
            if !all_crypt(salt) || salt.len() > 16 {
                return bad("salt must be 1-16 characters of [./0-9A-Za-z]");
            }
            if hash.len() != want || !all_crypt(hash) {
                return bad(&format!(
                    "the hash part must be {want} characters of [./0-9A-Za-z]"
                ));
            }
            Ok(())
        }
        "y" | "gy" | "7" => {
            if parts.len() != 4 || !parts[1..].iter().all(|p| all_crypt(p)) {
                return bad("expected $y$params$salt$hash with [./0-9A-Za-z] parts");
            }
            if parts[3].len() != 43 {
                return bad("the hash part must be 43 characters");
            }
            Ok(())
        }
        "2a" | "2b" | "2y" => match parts.as_slice() {
            [_, cost, rest]
                if cost.len() == 2
                    && cost.parse::<u8>().is_ok_and(|c| (4..=31).contains(&c))
                    && rest.len() == 53
                    && all_crypt(rest) =>
            {
                Ok(())
            }
            _ => bad("expected $2b$NN$ followed by 53 characters"),
        },
        "1" => bad("md5-crypt ($1$) is too weak; use yescrypt ($y$) or sha512-crypt ($6$)"),
        other => bad(&format!("unknown or unsupported scheme ${other}$")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const Y: &str = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7";
    pub const SHA512: &str = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";
    pub const SHA256: &str = "$5$saltsalt$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF5Z0yhL5";
    pub const BCRYPT: &str = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

    fn facts() -> SystemFacts {
        let mut f = SystemFacts::with_reserved(["opencoder", "ubuntu"]);
        for (n, id) in [
            ("root", 0),
            ("daemon", 1),
            ("nobody", 65534),
            ("ubuntu", 1000),
            ("opencoder", 1001),
            ("carol", 1500),
        ] {
            f.accounts.insert(n.into(), id);
        }
        f
    }

    fn user(name: &str, hash: &str) -> String {
        format!("[[users]]\nname = \"{name}\"\npassword_hash = '{hash}'\n")
    }

    #[test]
    fn accepts_good_manifests() {
        let text = format!(
            "version = 1\n{}{}{}{}locked = true\nuid = 2000\n",
            user("alice", Y),
            user("bob", SHA512),
            user("_svc-1", BCRYPT),
            user("dave", SHA256)
        );
        let m = load(&text, &facts()).unwrap();
        assert_eq!(m.users.len(), 4);
        assert!(m.users[3].locked);
        assert_eq!(m.users[3].uid, Some(2000));
        assert_eq!(m.active_users().count(), 3);
        // Existing login accounts (uid in range) may be taken over.
        load(&format!("version = 1\n{}", user("carol", Y)), &facts()).unwrap();
        load("version = 1\n", &facts()).unwrap();
    }

    #[test]
    fn locked_forms_are_accepted() {
        for h in ["*", "!", "!*", "!!", &format!("!{Y}")] {
            check_hash(h).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert!(is_locked_hash(h));
        }
        assert!(!is_locked_hash(Y));
    }

    #[test]
    fn round_trips_through_toml() {
        let m = Manifest {
            version: 1,
            users: vec![
                User {
                    name: "alice".into(),
                    password_hash: Y.into(),
                    locked: false,
                    uid: None,
                },
                User {
                    name: "bob".into(),
                    password_hash: SHA512.into(),
                    locked: true,
                    uid: Some(1234),
                },
            ],
        };
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn debug_output_hides_hashes() {
        let u = User {
            name: "alice".into(),
            password_hash: Y.into(),
            locked: false,
            uid: None,
        };
        assert!(!format!("{u:?}").contains("$y$"));
    }

    /// (manifest text, expected substring of the error)
    fn bad_manifests() -> Vec<(String, &'static str)> {
        let v = "version = 1\n";
        vec![
            (String::new(), "missing field `version`"),
            ("this is not toml".into(), "TOML"),
            ("version = 2\n".into(), "unsupported version 2"),
            ("version = \"1\"\n".into(), "invalid type"),
            (format!("{v}colour = \"red\"\n"), "unknown field `colour`"),
            (
                format!("{v}{}shell = \"/bin/sh\"\n", user("alice", Y)),
                "unknown field `shell`",
            ),
            (
                format!("{v}[[users]]\nname = \"alice\"\n"),
                "missing field `password_hash`",
            ),
            (format!("{v}{}", user("root", Y)), "built-in account"),
            (format!("{v}{}", user("opencoder", Y)), "built-in account"),
            (format!("{v}{}", user("ubuntu", Y)), "built-in account"),
            (
                format!("{v}{}", user("daemon", Y)),
                "system account (uid 1)",
            ),
            (
                format!("{v}{}", user("nobody", Y)),
                "system account (uid 65534)",
            ),
            (format!("{v}{}", user(&"a".repeat(33), Y)), "longer than 32"),
            (format!("{v}{}", user("Alice", Y)), "not a valid user name"),
            (format!("{v}{}", user("9lives", Y)), "not a valid user name"),
            (format!("{v}{}", user("", Y)), "name is empty"),
            (
                format!("{v}[[users]]\nname = \"eve:0:0\"\npassword_hash = '{Y}'\n"),
                "not a valid user name",
            ),
            (
                format!("{v}[[users]]\nname = \"eve\\nroot\"\npassword_hash = '{Y}'\n"),
                "not a valid user name",
            ),
            (
                format!("{v}{}{}", user("alice", Y), user("alice", SHA512)),
                "duplicate user name",
            ),
            (
                format!("{v}{}", user("alice", &format!("{Y}:0:0"))),
                "forbidden character ':'",
            ),
            (
                format!("{v}[[users]]\nname = \"alice\"\npassword_hash = \"{Y}\\nroot::0\"\n"),
                "forbidden character",
            ),
            (
                format!("{v}{}", user("alice", "$y$ j9T$abc$def")),
                "forbidden character ' '",
            ),
            (format!("{v}{}", user("alice", "")), "is empty"),
            (
                format!("{v}{}", user("alice", "plaintext-password")),
                "must start with $id$",
            ),
            (
                format!("{v}{}", user("alice", "$1$salt$abcdefghijklmnopqrstuv")),
                "too weak",
            ),
            (
                format!("{v}{}", user("alice", "$6$salt$tooshort")),
                "86 characters",
            ),
            (
                format!("{v}{}", user("alice", "$y$j9T$salt$short")),
                "43 characters",
            ),
            (
                format!(
                    "{v}{}",
                    user(
                        "alice",
                        "$2b$99$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
                    )
                ),
                "$2b$NN$",
            ),
            (
                format!("{v}{}", user("alice", "$zz$abc$def")),
                "unsupported scheme",
            ),
            (
                format!("{v}{}uid = 999\n", user("alice", Y)),
                "outside 1000..=59999",
            ),
            (
                format!("{v}{}uid = 60000\n", user("alice", Y)),
                "outside 1000..=59999",
            ),
            (
                format!(
                    "{v}{}uid = 2000\n{}uid = 2000\n",
                    user("alice", Y),
                    user("bob", Y)
                ),
                "also given to alice",
            ),
            (
                format!("{v}{}uid = 1500\n", user("alice", Y)),
                "already belongs to account 'carol'",
            ),
            (
                format!("{v}{}uid = -5\n", user("alice", Y)),
                "invalid value",
            ),
            (format!("{v}users = \"alice\"\n"), "invalid type"),
            ("x".repeat(MAX_BYTES + 1), "limit is"),
        ]
    }

    #[test]
    fn rejects_bad_manifests_with_clear_messages() {
        let cases = bad_manifests();
        assert!(cases.len() >= 25);
        for (text, want) in cases {
            let err = load(&text, &facts()).expect_err(&text[..text.len().min(200)]);
            let msg = err.to_string();
            assert!(
                msg.contains(want),
                "for {:?}\n  got: {msg}\n  want: {want}",
                &text[..text.len().min(200)]
            );
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = format!(
            "version = 3\n{}{}uid = 5\n{}",
            user("root", Y),
            user("Bad", "nope"),
            user("ok", "x:y")
        );
        match load(&text, &facts()) {
            Err(ManifestError::Invalid(problems)) => {
                let fields: Vec<_> = problems.iter().map(|p| (p.user.clone(), p.field)).collect();
                assert_eq!(
                    fields,
                    vec![
                        (None, "version"),
                        (Some("root".into()), "name"),
                        (Some("users[1]".into()), "name"),
                        (Some("users[1]".into()), "password_hash"),
                        (Some("users[1]".into()), "uid"),
                        (Some("ok".into()), "password_hash"),
                    ]
                );
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn error_messages_never_echo_a_hash() {
        for text in [
            format!("version = 1\n{}", user("root", SHA512)),
            format!("version = 1\n{}bogus = 1\n", user("alice", SHA512)),
            format!("version = 1\n[[users]]\nname = 'alice'\npassword_hash = ['{SHA512}']\n"),
            format!("version = 1\n[[users]]\nname = 'alice'\npassword_hash = '{SHA512}\n"),
        ] {
            let msg = load(&text, &facts()).unwrap_err().to_string();
            assert!(!msg.contains("qFmFH"), "{msg}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let msg = load(
            "version = 1\n\n[[users]]\nname = 'a'\npassword_hash = '*'\nshell = 1\n",
            &facts(),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("line 6"), "{msg}");
    }
}

/// A stable-toolchain stand-in for the `cargo fuzz` target in fuzz/: thousands of random
/// mutations of valid and invalid manifests go through parse + validate without a panic,
/// and everything that validates survives a round trip.
#[cfg(test)]
mod mutation_tests {
    use super::tests::{BCRYPT, SHA512, Y};
    use super::*;

    /// xorshift64*: deterministic, so a failure is reproducible from the seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545F4914F6CDD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const PIECES: &[&str] = &[
        ":",
        "\n",
        "\0",
        " ",
        "$",
        "!",
        "*",
        "\"",
        "'",
        "[[users]]",
        "name = ",
        "uid = ",
        "locked = true",
        "version = 1",
        "password_hash = ",
        "root",
        "\u{feff}",
        "é",
        "9999999999999999999",
        "=",
        "[",
        "]",
    ];

    #[test]
    fn random_mutations_never_panic() {
        let seed_texts = [
            format!("version = 1\n[[users]]\nname = \"alice\"\npassword_hash = '{Y}'\nuid = 1001\n"),
            format!("version = 1\n[[users]]\nname = \"bob\"\npassword_hash = '{SHA512}'\nlocked = true\n[[users]]\nname = \"c\"\npassword_hash = '{BCRYPT}'\n"),
            "version = 1\n".to_string(),
        ];
        let facts = SystemFacts::with_reserved(["opencoder", "ubuntu"]);
        let mut rng = Rng(0x9E3779B97F4A7C15);
        let mut valid = 0;
        for i in 0..20_000 {
            let mut bytes = seed_texts[i % seed_texts.len()].clone().into_bytes();
            for _ in 0..1 + rng.below(4) {
                let pos = rng.below(bytes.len() + 1);
                match rng.below(3) {
                    0 if !bytes.is_empty() => {
                        bytes.remove(pos.min(bytes.len() - 1));
                    }
                    1 => {
                        let piece = PIECES[rng.below(PIECES.len())].as_bytes();
                        bytes.splice(pos..pos, piece.iter().copied());
                    }
                    _ => {
                        if let Some(b) = bytes.get_mut(pos) {
                            *b = (rng.next() & 0x7f) as u8;
                        }
                    }
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if let Ok(m) = load(&text, &facts) {
                valid += 1;
                assert_eq!(
                    load(&m.to_toml(), &facts).as_ref(),
                    Ok(&m),
                    "round trip of {text:?}"
                );
                for u in &m.users {
                    assert!(!u.password_hash.contains([':', '\n', '\0']), "{text:?}");
                    assert!(check_name(&u.name).is_ok(), "{text:?}");
                }
            }
        }
        assert!(valid > 100, "mutations too destructive: only {valid} valid");
    }
}
