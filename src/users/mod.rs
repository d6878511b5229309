//! Login users: every user operation (restore at boot, add, remove, passwd, lock, unlock,
//! list, export, import, verify) implemented once over the manifest [`store`], the
//! [`plan`] and the system tools ([`apply`]). The CLI and, later, the admin API call these.

pub mod accounts;
pub mod apply;
pub mod plan;
pub mod store;
pub mod worker;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::manifest::{self, Manifest, ManifestError, User};
use crate::secret::SecretString;
use accounts::Accounts;
use store::{Persisted, Store};

/// Default manifest location (a directory volume in the image).
pub const DEFAULT_MANIFEST: &str = "/var/lib/occ/users.toml";
/// Where opencode-cloud's entrypoint kept one JSON record per user.
pub const DEFAULT_LEGACY_DIR: &str = "/var/lib/opencode-users";
/// Built-in accounts of the image that are never login users.
pub const BUILTIN_USERS: [&str; 2] = ["opencoder", "ubuntu"];
/// The PAM service opencode authenticates through.
pub const PAM_SERVICE: &str = "opencode";

/// Everything that can go wrong with users.
#[derive(Debug, Error)]
pub enum UsersError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("user {0} does not exist in the manifest")]
    NoSuchUser(String),
    #[error("user {0} already exists")]
    AlreadyExists(String),
    #[error("refusing to remove {0}, the last user, while opencode is exposed to the network ({1}); add another user first, or use --force")]
    LastUser(String, String),
    #[error("Authentication failed")]
    AuthFailed,
    #[error("/etc does not match the manifest after the restore: {0}")]
    OutOfSync(String),
}

impl UsersError {
    fn io(path: &Path, source: std::io::Error) -> UsersError {
        UsersError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where users live and which names are off limits.
#[derive(Debug, Clone)]
pub struct UsersConfig {
    pub manifest: PathBuf,
    pub legacy_dir: PathBuf,
    /// Directory holding passwd and shadow (always /etc outside unit tests).
    pub etc: PathBuf,
    /// Service user and built-in image users: never login users.
    pub reserved: Vec<String>,
}

impl UsersConfig {
    /// Paths from the environment (`OCC_USERS_FILE`, `OCC_LEGACY_USERS_DIR`,
    /// `OCC_SERVICE_USER`) or defaults; `manifest` overrides the file when given.
    pub fn from_env(manifest: Option<PathBuf>) -> UsersConfig {
        let manifest = manifest
            .or_else(|| std::env::var_os("OCC_USERS_FILE").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST));
        let legacy_dir = std::env::var_os("OCC_LEGACY_USERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LEGACY_DIR));
        let mut reserved: Vec<String> = BUILTIN_USERS.iter().map(|s| s.to_string()).collect();
        if let Ok(service) = std::env::var("OCC_SERVICE_USER") {
            if !reserved.contains(&service) {
                reserved.push(service);
            }
        }
        UsersConfig {
            manifest,
            legacy_dir,
            etc: PathBuf::from("/etc"),
            reserved,
        }
    }
}

/// What a change did to the manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    Saved,
    SavedInPlace,
    NotPersistedReadOnly,
}

impl Persistence {
    pub fn note(self) -> Option<&'static str> {
        match self {
            Persistence::NotPersistedReadOnly => Some(
                "not persisted: manifest is read-only (the change lasts until the next restore)",
            ),
            _ => None,
        }
    }
}

impl From<Persisted> for Persistence {
    fn from(p: Persisted) -> Self {
        match p {
            Persisted::Saved => Persistence::Saved,
            Persisted::SavedInPlace => Persistence::SavedInPlace,
            Persisted::ReadOnly => Persistence::NotPersistedReadOnly,
        }
    }
}

/// One row of `user list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub uid: Option<u32>,
    pub locked: bool,
    pub in_manifest: bool,
    pub in_etc: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreReport {
    pub summary: String,
    pub warnings: Vec<String>,
    /// Manifest problem, when the manifest was refused (then no user is restored).
    pub manifest_error: Option<String>,
}

/// The user operations over one configuration.
#[derive(Debug, Clone)]
pub struct Users {
    pub cfg: UsersConfig,
    store: Store,
    /// Changes that could not be saved (a read-only manifest, e.g. a Kubernetes Secret), kept
    /// in memory until the next boot so later changes and reloads do not undo them. Shared
    /// by clones (PID 1's loop and its admin threads).
    overlay: std::sync::Arc<std::sync::Mutex<Option<Overlay>>>,
}

/// The overlay as the user helper process receives and returns it (the manifest as TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverlayWire {
    pub base: Option<String>,
    pub manifest: String,
}

/// An unsaved manifest and the file text it was made from: if the file changes (the Secret
/// was updated), the file wins and the overlay is dropped.
#[derive(Debug, Clone)]
struct Overlay {
    base: Option<String>,
    manifest: Manifest,
}

impl Users {
    pub fn new(cfg: UsersConfig) -> Users {
        let store = Store::new(cfg.manifest.clone());
        Users {
            cfg,
            store,
            overlay: Default::default(),
        }
    }

    /// The unsaved overlay, for the user helper process.
    pub fn overlay_wire(&self) -> Option<OverlayWire> {
        let o = self.overlay.lock().ok()?.clone()?;
        Some(OverlayWire {
            base: o.base,
            manifest: o.manifest.to_toml(),
        })
    }

    /// Take the overlay back from the user helper process (an unparsable one is dropped).
    pub fn set_overlay_wire(&self, wire: Option<OverlayWire>) {
        let overlay = wire.and_then(|w| {
            manifest::parse(&w.manifest).ok().map(|m| Overlay {
                base: w.base,
                manifest: m,
            })
        });
        if let Ok(mut o) = self.overlay.lock() {
            *o = overlay;
        }
    }

    /// The same users with `other`'s unsaved changes (a reload that keeps the manifest path).
    pub fn keep_unsaved_from(mut self, other: &Users) -> Users {
        if self.cfg.manifest == other.cfg.manifest {
            self.overlay = other.overlay.clone();
        }
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn reserved(&self) -> Vec<&str> {
        self.cfg.reserved.iter().map(String::as_str).collect()
    }

    fn accounts(&self) -> Result<Accounts, UsersError> {
        Accounts::read(&self.cfg.etc).map_err(|(path, e)| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                UsersError::Invalid {
                    what: "caller",
                    message: format!(
                        "cannot read {}: managing users needs root (run it inside the container as root, e.g. docker exec)",
                        path.display()
                    ),
                }
            } else {
                UsersError::io(&path, e)
            }
        })
    }

    /// The current manifest, validated against /etc; an absent file is an empty manifest.
    pub fn load(&self, accounts: &Accounts) -> Result<Manifest, UsersError> {
        let text = self
            .store
            .read()
            .map_err(|e| UsersError::io(&self.cfg.manifest, e))?;
        if let Ok(mut overlay) = self.overlay.lock() {
            match overlay.as_ref() {
                Some(o) if o.base == text => return Ok(o.manifest.clone()),
                Some(_) => {
                    log::warn!(
                        "users: {} changed on disk; changes that could not be saved there are dropped",
                        self.cfg.manifest.display()
                    );
                    *overlay = None;
                }
                None => {}
            }
        }
        match text {
            None => Ok(Manifest::empty()),
            Some(t) => manifest::load(&t, &accounts.facts(&self.reserved())).map_err(|source| {
                UsersError::Manifest {
                    path: self.cfg.manifest.clone(),
                    source,
                }
            }),
        }
    }

    fn save(&self, m: &Manifest) -> Result<Persistence, UsersError> {
        let persisted = self
            .store
            .write(&m.to_toml())
            .map_err(|e| UsersError::io(&self.cfg.manifest, e))?;
        if let Ok(mut overlay) = self.overlay.lock() {
            *overlay = match persisted {
                store::Persisted::ReadOnly => Some(Overlay {
                    base: self.store.read().ok().flatten(),
                    manifest: m.clone(),
                }),
                _ => None,
            };
        }
        Ok(Persistence::from(persisted))
    }

    fn lock(&self) -> Result<store::Lock, UsersError> {
        self.store
            .lock()
            .map_err(|e| UsersError::io(&self.cfg.manifest, e))
    }

    /// Make /etc match the manifest. `Ok` means /etc matches it afterwards.
    pub fn sync(&self) -> Result<RestoreReport, UsersError> {
        let _lock = self.lock()?;
        self.sync_locked()
    }

    fn sync_locked(&self) -> Result<RestoreReport, UsersError> {
        let accounts = self.accounts()?;
        let m = self.load(&accounts)?;
        let plan = plan::plan(&m, &accounts);
        apply::apply(&plan)?;
        let after_accounts = if plan.is_noop() {
            accounts
        } else {
            let a = self.accounts()?;
            let after = plan::plan(&m, &a);
            if !after.is_noop() {
                return Err(UsersError::OutOfSync(format!("{after:?}")));
            }
            a
        };
        // Homes made before (by hand, an older occ-init, another image) are closed too.
        for u in &m.users {
            let Some(acct) = after_accounts.by_name.get(&u.name) else {
                continue;
            };
            match apply::private_home(Path::new(&acct.home)) {
                Ok(Some(old)) => log::info!(
                    "users: {}'s home {} was mode {old:o}; now readable by its owner only",
                    u.name,
                    acct.home
                ),
                Ok(None) => {}
                Err(e) => log::warn!("users: {e}"),
            }
        }
        Ok(RestoreReport {
            summary: plan.summary(),
            warnings: plan.warnings,
            manifest_error: None,
        })
    }

    /// Boot-time restore: import legacy records or bootstrap a first user when there is no
    /// manifest (or no user), then sync. Never fails: an invalid manifest changes nothing
    /// and counts as "no users"; every problem is logged and reported.
    pub fn restore_at_boot(&self, bootstrap: Option<Bootstrap>) -> RestoreReport {
        let _lock = match self.lock() {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("users: cannot take the users lock: {e}");
                None
            }
        };
        if let Err(e) = self.import_legacy_if_needed() {
            log::error!("users: legacy import failed: {e}");
        }
        if let Some(b) = bootstrap {
            if let Err(e) = self.bootstrap(b) {
                log::error!("users: bootstrap user not added: {e}");
            }
        }
        match self.sync_locked() {
            Ok(report) => {
                log::info!("{}", report.summary);
                for w in &report.warnings {
                    log::warn!("users: {w}");
                }
                report
            }
            Err(e) => {
                log::error!(
                    "users: restore failed, treating the container as having no users: {e}"
                );
                RestoreReport {
                    summary: "users: restore failed".into(),
                    warnings: Vec::new(),
                    manifest_error: Some(e.to_string()),
                }
            }
        }
    }

    /// When the manifest does not exist but legacy JSON records do, write a manifest from
    /// them (once). Returns how many users were imported.
    pub fn import_legacy_if_needed(&self) -> Result<usize, UsersError> {
        if self.cfg.manifest.exists() {
            return Ok(0);
        }
        let dir = &self.cfg.legacy_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(UsersError::io(dir, e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Ok(0);
        }
        let accounts = self.accounts()?;
        let facts = accounts.facts(&self.reserved());
        let mut m = Manifest::empty();
        for path in &paths {
            match legacy_record(path) {
                Ok(u) if facts.reserved.contains(&u.name) => {
                    log::info!("users: legacy import skips built-in user {}", u.name)
                }
                Ok(u) => {
                    let mut candidate = m.clone();
                    candidate.users.push(u);
                    let problems = manifest::validate(&candidate, &facts);
                    if problems.is_empty() {
                        m = candidate;
                    } else {
                        for p in problems {
                            log::warn!("users: legacy record {} skipped: {p}", path.display());
                        }
                    }
                }
                Err(e) => log::warn!("users: legacy record {} skipped: {e}", path.display()),
            }
        }
        self.save(&m)?;
        log::info!(
            "users: imported {} user(s) from {} into {}",
            m.users.len(),
            dir.display(),
            self.cfg.manifest.display()
        );
        Ok(m.users.len())
    }

    /// Add the bootstrap user when the manifest has no users.
    fn bootstrap(&self, b: Bootstrap) -> Result<(), UsersError> {
        let accounts = self.accounts()?;
        let mut m = self.load(&accounts)?;
        if !m.users.is_empty() {
            log::debug!("users: manifest has users; OCC_BOOTSTRAP_USER ignored");
            return Ok(());
        }
        m.users.push(User {
            name: b.name.clone(),
            password_hash: b.hash.expose().to_string(),
            locked: false,
            uid: None,
        });
        let problems = manifest::validate(&m, &accounts.facts(&self.reserved()));
        if !problems.is_empty() {
            return Err(UsersError::Manifest {
                path: "OCC_BOOTSTRAP_*".into(),
                source: ManifestError::Invalid(problems),
            });
        }
        let persisted = self.save(&m)?;
        log::info!("users: added bootstrap user {} ({persisted:?})", b.name);
        Ok(())
    }

    /// Validate a name for a new or existing login user against /etc and the reserved names.
    fn check_user_name(&self, name: &str, accounts: &Accounts) -> Result<(), UsersError> {
        let probe = Manifest {
            version: manifest::VERSION,
            users: vec![User {
                name: name.to_string(),
                password_hash: "*".into(),
                locked: false,
                uid: None,
            }],
        };
        let problems = manifest::validate(&probe, &accounts.facts(&self.reserved()));
        match problems.into_iter().next() {
            None => Ok(()),
            Some(p) => Err(UsersError::Invalid {
                what: "user name",
                message: p.message,
            }),
        }
    }

    /// The one read-modify-write of the manifest: under the users lock, load and validate
    /// it, let `edit` change it, apply the result to /etc, then persist it.
    fn change(
        &self,
        edit: impl FnOnce(&mut Manifest, &Accounts) -> Result<(), UsersError>,
        retire: Option<&str>,
    ) -> Result<Persistence, UsersError> {
        let _lock = self.lock()?;
        let accounts = self.accounts()?;
        let mut m = self.load(&accounts)?;
        self.reserve_space(&m)?;
        edit(&mut m, &accounts)?;
        self.commit(m, retire)
    }

    /// Fail before /etc is touched when the manifest directory cannot take the rewrite (the
    /// new manifest, its backup and the temporary file; a user adds at most a few hundred
    /// bytes).
    fn reserve_space(&self, m: &Manifest) -> Result<(), UsersError> {
        let need = 3 * (m.to_toml().len() + 1024);
        self.store.reserve(need).map_err(|e| {
            UsersError::io(
                &self.cfg.manifest,
                std::io::Error::new(
                    e.kind(),
                    format!("no room to rewrite the manifest ({e}); nothing was changed"),
                ),
            )
        })
    }

    /// Add a user with a plaintext password (hashed by the system) or a ready hash.
    pub fn add(
        &self,
        name: &str,
        secret: NewSecret,
        uid: Option<u32>,
    ) -> Result<Persistence, UsersError> {
        self.change(
            |m, accounts| {
                if m.user(name).is_some() {
                    return Err(UsersError::AlreadyExists(name.to_string()));
                }
                self.check_user_name(name, accounts)?;
                let hash = self.hash_for(name, secret, uid, accounts)?;
                m.users.push(User {
                    name: name.to_string(),
                    password_hash: hash,
                    locked: false,
                    uid,
                });
                Ok(())
            },
            None,
        )
    }

    /// Change a user's password (plaintext or hash).
    pub fn set_password(&self, name: &str, secret: NewSecret) -> Result<Persistence, UsersError> {
        self.change(
            |m, accounts| {
                let uid = m
                    .user(name)
                    .ok_or_else(|| UsersError::NoSuchUser(name.into()))?
                    .uid;
                let hash = self.hash_for(name, secret, uid, accounts)?;
                if let Some(u) = m.user_mut(name) {
                    u.password_hash = hash;
                }
                Ok(())
            },
            None,
        )
    }

    /// Lock or unlock a user.
    pub fn set_locked(&self, name: &str, locked: bool) -> Result<Persistence, UsersError> {
        self.change(
            |m, _| {
                let u = m
                    .user_mut(name)
                    .ok_or_else(|| UsersError::NoSuchUser(name.into()))?;
                u.locked = locked;
                Ok(())
            },
            None,
        )
    }

    /// Remove a user from the manifest; its account is locked, never deleted, and its home
    /// is kept. Refuses to remove the last active user while exposed (unless `force`).
    pub fn remove(
        &self,
        name: &str,
        force: bool,
        exposure: &Exposure,
    ) -> Result<Persistence, UsersError> {
        self.change(
            |m, _| {
                if m.user(name).is_none() {
                    return Err(UsersError::NoSuchUser(name.into()));
                }
                let others_active = m.active_users().any(|u| u.name != name);
                if exposure.exposed && !others_active && !force {
                    return Err(UsersError::LastUser(name.into(), exposure.address.clone()));
                }
                m.users.retain(|u| u.name != name);
                Ok(())
            },
            // Accounts occ-init did not create are not retired by the plan: lock it too.
            Some(name),
        )
    }

    /// Replace the manifest with `text` (validated first) and restore from it.
    pub fn import(&self, text: &str) -> Result<(Persistence, RestoreReport), UsersError> {
        let _lock = self.lock()?;
        let accounts = self.accounts()?;
        let m = manifest::load(text, &accounts.facts(&self.reserved())).map_err(|source| {
            UsersError::Manifest {
                path: "import".into(),
                source,
            }
        })?;
        self.reserve_space(&m)?;
        // The summary is what the import changes, counted before it is applied.
        let summary = plan::plan(&m, &accounts).summary();
        let persistence = self.commit(m, None)?;
        let mut report = self.sync_locked()?;
        report.summary = summary;
        Ok((persistence, report))
    }

    /// Apply a changed manifest to /etc, then persist it. /etc first: if the tools fail,
    /// the manifest is left as it was.
    fn commit(&self, m: Manifest, retire: Option<&str>) -> Result<Persistence, UsersError> {
        // Fresh accounts: hash_for may have just created the user.
        let accounts = self.accounts()?;
        let mut plan = plan::plan(&m, &accounts);
        if let Some(name) = retire {
            plan::retire(&mut plan, name, &accounts);
        }
        apply::apply(&plan)?;
        self.save(&m)
    }

    /// The hash to store for a new secret. A plaintext password is set through chpasswd
    /// (creating the account first if needed) and its hash read back from /etc/shadow.
    fn hash_for(
        &self,
        name: &str,
        secret: NewSecret,
        uid: Option<u32>,
        accounts: &Accounts,
    ) -> Result<String, UsersError> {
        match secret {
            NewSecret::Hash(h) => {
                manifest::check_hash(h.expose()).map_err(|message| UsersError::Invalid {
                    what: "password hash",
                    message,
                })?;
                Ok(h.expose().to_string())
            }
            NewSecret::Password(p) => {
                crate::secret::check_password(p.expose()).map_err(|message| {
                    UsersError::Invalid {
                        what: "password",
                        message,
                    }
                })?;
                if accounts.get(name).is_none() {
                    apply::useradd(&plan::NewUser {
                        name: name.to_string(),
                        uid,
                    })?;
                }
                apply::chpasswd_plain(name, p.expose())?;
                let after = self.accounts()?;
                let shadow = after
                    .get(name)
                    .and_then(|a| a.shadow.clone())
                    .ok_or_else(|| UsersError::Tool {
                        tool: "chpasswd",
                        message: format!("no shadow entry for {name} afterwards"),
                    })?;
                manifest::check_hash(&shadow).map_err(|message| UsersError::Invalid {
                    what: "hash produced by chpasswd",
                    message,
                })?;
                Ok(shadow)
            }
        }
    }

    /// Manifest users and managed accounts, with their state in /etc.
    pub fn list(&self) -> Result<Vec<UserInfo>, UsersError> {
        self.list_with(&self.accounts()?)
    }

    /// [`Users::list`] over accounts already read from /etc.
    fn list_with(&self, accounts: &Accounts) -> Result<Vec<UserInfo>, UsersError> {
        let m = self.load(accounts)?;
        let mut rows: Vec<UserInfo> = m
            .users
            .iter()
            .map(|u| {
                let acct = accounts.get(&u.name);
                UserInfo {
                    name: u.name.clone(),
                    uid: acct.map(|a| a.uid).or(u.uid),
                    // Locked when either side says so: a lock the manifest asks for counts
                    // even if applying it to /etc failed (fail closed).
                    // An empty password field in /etc counts as locked too: nobody logs in
                    // without a password, whatever PAM's `nullok` would allow.
                    locked: u.locked
                        || manifest::is_locked_hash(&u.password_hash)
                        || acct
                            .and_then(|a| a.shadow.as_deref())
                            .is_some_and(|s| s.is_empty() || manifest::is_locked_hash(s)),
                    in_manifest: true,
                    in_etc: acct.is_some(),
                }
            })
            .collect();
        for (name, acct) in &accounts.by_name {
            if acct.is_managed() && m.user(name).is_none() {
                rows.push(UserInfo {
                    name: name.clone(),
                    uid: Some(acct.uid),
                    locked: acct
                        .shadow
                        .as_deref()
                        .is_none_or(|s| s.is_empty() || manifest::is_locked_hash(s)),
                    in_manifest: false,
                    in_etc: true,
                });
            }
        }
        Ok(rows)
    }

    /// A manifest describing the current state of /etc, for a host-side backup.
    pub fn export(&self) -> Result<String, UsersError> {
        let accounts = self.accounts()?;
        let m = self.load(&accounts)?;
        let mut out = Manifest::empty();
        for u in &m.users {
            let mut u = u.clone();
            if let Some(shadow) = accounts.get(&u.name).and_then(|a| a.shadow.as_deref()) {
                let locked = manifest::is_locked_hash(shadow);
                let bare = shadow
                    .strip_prefix('!')
                    .filter(|b| !b.is_empty() && *b != "*");
                u.locked = locked;
                u.password_hash = match (locked, bare) {
                    (true, Some(b)) => b.to_string(),
                    _ => shadow.to_string(),
                };
            }
            out.users.push(u);
        }
        for (name, acct) in &accounts.by_name {
            if acct.is_managed() && m.user(name).is_none() {
                if let Some(shadow) = acct
                    .shadow
                    .as_deref()
                    .filter(|s| !manifest::is_locked_hash(s))
                {
                    out.users.push(User {
                        name: name.clone(),
                        password_hash: shadow.to_string(),
                        locked: false,
                        uid: Some(acct.uid),
                    });
                }
            }
        }
        Ok(out.to_toml())
    }

    /// A fingerprint of `name`'s login when it is a login user that can log in now (listed,
    /// present in /etc, unlocked), else `None`. It changes whenever the password, the lock or
    /// the account changes, so holders of a session can tell that it must end.
    pub fn login_fingerprint(&self, name: &str) -> Result<Option<u64>, UsersError> {
        Ok(self.login_fingerprints()?.remove(name))
    }

    /// Every user who can log in now, with her login fingerprint (/etc read once).
    pub fn login_fingerprints(&self) -> Result<std::collections::HashMap<String, u64>, UsersError> {
        use std::hash::{Hash, Hasher};
        let accounts = self.accounts()?;
        let mut out = std::collections::HashMap::new();
        for r in self.list_with(&accounts)? {
            if !r.in_etc || r.locked {
                continue;
            }
            let Some(acct) = accounts.get(&r.name) else {
                continue;
            };
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (r.name.as_str(), acct.uid, acct.shadow.as_deref()).hash(&mut h);
            out.insert(r.name, h.finish());
        }
        Ok(out)
    }

    /// The uid of `name` when she can log in now.
    pub fn login_uid(&self, name: &str) -> Result<Option<u32>, UsersError> {
        let accounts = self.accounts()?;
        let active = self
            .list_with(&accounts)?
            .into_iter()
            .any(|r| r.name == name && r.in_etc && !r.locked);
        Ok(active.then(|| accounts.get(name).map(|a| a.uid)).flatten())
    }

    /// Check a password through PAM service `opencode`. Any failure is the same generic
    /// error, so callers cannot tell unknown users from wrong passwords.
    pub fn verify(&self, name: &str, password: &SecretString) -> Result<(), UsersError> {
        let mut client =
            pam::Client::with_password(PAM_SERVICE).map_err(|_| UsersError::AuthFailed)?;
        client
            .conversation_mut()
            .set_credentials(name, password.expose());
        client.authenticate().map_err(|_| UsersError::AuthFailed)
    }
}

/// A new password: plaintext (hashed by the system) or a ready hash.
#[derive(Debug)]
pub enum NewSecret {
    Password(SecretString),
    Hash(SecretString),
}

/// First user from the environment (`OCC_BOOTSTRAP_USER` + hash or hash file).
#[derive(Debug)]
pub struct Bootstrap {
    pub name: String,
    pub hash: SecretString,
}

impl Bootstrap {
    /// Read the bootstrap variables; `Err` when they are set but unusable.
    pub fn from_env() -> Result<Option<Bootstrap>, String> {
        let Ok(name) = std::env::var("OCC_BOOTSTRAP_USER") else {
            return Ok(None);
        };
        let hash = if let Ok(h) = std::env::var("OCC_BOOTSTRAP_PASSWORD_HASH") {
            h
        } else if let Some(file) = std::env::var_os("OCC_BOOTSTRAP_PASSWORD_HASH_FILE") {
            std::fs::read_to_string(&file)
                .map_err(|e| {
                    format!(
                        "OCC_BOOTSTRAP_PASSWORD_HASH_FILE {}: {e}",
                        Path::new(&file).display()
                    )
                })?
                .trim()
                .to_string()
        } else {
            return Err("OCC_BOOTSTRAP_USER is set but neither OCC_BOOTSTRAP_PASSWORD_HASH nor OCC_BOOTSTRAP_PASSWORD_HASH_FILE is".into());
        };
        Ok(Some(Bootstrap {
            name,
            hash: SecretString::new(hash),
        }))
    }
}

/// Whether opencode is (or would be) reachable from the network, for the last-user guard.
#[derive(Debug, Clone)]
pub struct Exposure {
    pub address: String,
    pub exposed: bool,
}

/// Read one legacy record `{"username", "password_hash", "locked"}`.
fn legacy_record(path: &Path) -> Result<User, String> {
    #[derive(serde::Deserialize)]
    struct Legacy {
        username: String,
        password_hash: String,
        #[serde(default)]
        locked: bool,
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    // serde_json's messages name positions, not values, so no hash is echoed.
    let rec: Legacy =
        serde_json::from_str(&text).map_err(|e| format!("not a legacy user record: {e}"))?;
    Ok(User {
        name: rec.username,
        password_hash: rec.password_hash,
        locked: rec.locked,
        uid: None,
    })
}
