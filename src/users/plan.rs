//! The user plan: a pure comparison of the manifest with the accounts in /etc that says
//! which users to create, which shadow fields to set, and which retired users to lock.

use crate::manifest::{is_locked_hash, Manifest};

use super::accounts::Accounts;

/// A user to create with `useradd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: String,
    pub uid: Option<u32>,
}

/// What to do to make /etc match the manifest.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Accounts to create (their shadow field is in `set_shadow` too).
    pub create: Vec<NewUser>,
    /// `(name, shadow password field)` to write with one `chpasswd -e`.
    pub set_shadow: Vec<(String, String)>,
    /// Names of existing users whose hash or lock state changes.
    pub updated: Vec<String>,
    /// Users occ-init created earlier that left the manifest: locked, never deleted.
    pub retired: Vec<String>,
    /// Users already in sync: no process is spawned for them.
    pub unchanged: Vec<String>,
    /// Things the plan cannot fix (e.g. a uid that differs from the manifest's).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("create", &self.create)
            .field(
                "set_shadow",
                &self.set_shadow.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("updated", &self.updated)
            .field("retired", &self.retired)
            .field("unchanged", &self.unchanged)
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Plan {
    /// True when nothing needs to change.
    pub fn is_noop(&self) -> bool {
        self.create.is_empty() && self.set_shadow.is_empty()
    }

    /// The one-line boot summary.
    pub fn summary(&self) -> String {
        format!(
            "users: {} created, {} updated, {} locked (left the manifest), {} unchanged",
            self.create.len(),
            self.updated.len(),
            self.retired.len(),
            self.unchanged.len()
        )
    }
}

/// The shadow field a manifest user should have: its hash, with `!` in front when locked.
pub fn desired_shadow(hash: &str, locked: bool) -> String {
    if locked && !is_locked_hash(hash) {
        format!("!{hash}")
    } else {
        hash.to_string()
    }
}

/// The locked form of a current shadow field (what `passwd -l` would leave).
pub fn locked_shadow(current: &str) -> String {
    if is_locked_hash(current) {
        current.to_string()
    } else {
        format!("!{current}")
    }
}

/// Compare a (validated) manifest with the current accounts.
pub fn plan(manifest: &Manifest, accounts: &Accounts) -> Plan {
    let mut p = Plan::default();
    for u in &manifest.users {
        let want = desired_shadow(&u.password_hash, u.locked);
        match accounts.get(&u.name) {
            None => {
                p.create.push(NewUser {
                    name: u.name.clone(),
                    uid: u.uid,
                });
                p.set_shadow.push((u.name.clone(), want));
            }
            Some(acct) => {
                if let Some(uid) = u.uid {
                    if uid != acct.uid {
                        p.warnings.push(format!(
                            "user {}: manifest uid {uid} differs from existing uid {}; left as is",
                            u.name, acct.uid
                        ));
                    }
                }
                if acct.shadow.as_deref() == Some(want.as_str()) {
                    p.unchanged.push(u.name.clone());
                } else {
                    p.updated.push(u.name.clone());
                    p.set_shadow.push((u.name.clone(), want));
                }
            }
        }
    }
    for (name, acct) in &accounts.by_name {
        if acct.is_managed() && manifest.user(name).is_none() {
            let current = acct.shadow.as_deref().unwrap_or("!");
            if !is_locked_hash(current) {
                p.retired.push(name.clone());
                p.set_shadow.push((name.clone(), locked_shadow(current)));
            }
        }
    }
    p
}

/// Also lock `name` (an account occ-init did not create, removed from the manifest on
/// request), unless it is gone, already locked, or already planned.
pub fn retire(p: &mut Plan, name: &str, accounts: &Accounts) {
    let Some(acct) = accounts.get(name) else {
        return;
    };
    let current = acct.shadow.as_deref().unwrap_or("!");
    if is_locked_hash(current) || p.set_shadow.iter().any(|(n, _)| n == name) {
        return;
    }
    p.retired.push(name.to_string());
    p.set_shadow
        .push((name.to_string(), locked_shadow(current)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{SHA512, Y};
    use crate::manifest::User;

    fn manifest(users: &[(&str, &str, bool, Option<u32>)]) -> Manifest {
        Manifest {
            version: 1,
            users: users
                .iter()
                .map(|&(n, h, l, uid)| User {
                    name: n.into(),
                    password_hash: h.into(),
                    locked: l,
                    uid,
                })
                .collect(),
        }
    }

    fn accounts(lines: &[(&str, u32, &str, &str)]) -> Accounts {
        let passwd: String = lines
            .iter()
            .map(|(n, uid, gecos, _)| format!("{n}:x:{uid}:{uid}:{gecos}:/home/{n}:/bin/bash\n"))
            .collect();
        let shadow: String = lines
            .iter()
            .map(|(n, _, _, pw)| format!("{n}:{pw}:19000:0:99999:7:::\n"))
            .collect();
        Accounts::parse(&passwd, &shadow)
    }

    const M: &str = super::super::accounts::MANAGED_GECOS;

    #[test]
    fn fresh_restore_creates_everyone_with_one_batch() {
        let p = plan(
            &manifest(&[("alice", Y, false, None), ("bob", SHA512, true, Some(2000))]),
            &accounts(&[("root", 0, "root", "*")]),
        );
        assert_eq!(
            p.create,
            vec![
                NewUser {
                    name: "alice".into(),
                    uid: None
                },
                NewUser {
                    name: "bob".into(),
                    uid: Some(2000)
                }
            ]
        );
        assert_eq!(
            p.set_shadow,
            vec![
                ("alice".into(), Y.to_string()),
                ("bob".into(), format!("!{SHA512}"))
            ]
        );
        assert!(p.updated.is_empty() && p.unchanged.is_empty() && p.retired.is_empty());
        assert_eq!(
            p.summary(),
            "users: 2 created, 0 updated, 0 locked (left the manifest), 0 unchanged"
        );
    }

    #[test]
    fn in_sync_is_a_noop() {
        let p = plan(
            &manifest(&[("alice", Y, false, None), ("bob", SHA512, true, None)]),
            &accounts(&[
                ("alice", 1001, M, Y),
                ("bob", 1002, M, &format!("!{SHA512}")),
            ]),
        );
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(p.unchanged, vec!["alice", "bob"]);
    }

    #[test]
    fn hash_change_lock_and_unlock_are_updates() {
        let p = plan(
            &manifest(&[
                ("alice", SHA512, false, None),
                ("bob", Y, true, None),
                ("carol", Y, false, None),
            ]),
            &accounts(&[
                ("alice", 1001, M, Y),
                ("bob", 1002, M, Y),
                ("carol", 1003, M, &format!("!{Y}")),
            ]),
        );
        assert_eq!(p.updated, vec!["alice", "bob", "carol"]);
        assert_eq!(
            p.set_shadow,
            vec![
                ("alice".into(), SHA512.to_string()),
                ("bob".into(), format!("!{Y}")),
                ("carol".into(), Y.to_string())
            ]
        );
    }

    #[test]
    fn managed_users_that_left_are_locked_not_deleted() {
        let p = plan(
            &manifest(&[("alice", Y, false, None)]),
            &accounts(&[
                ("alice", 1001, M, Y),
                ("gone", 1002, M, SHA512),
                ("already", 1003, M, "!x"),
                ("handmade", 1004, "Hand Made", Y),
            ]),
        );
        assert_eq!(p.retired, vec!["gone"]);
        assert_eq!(p.set_shadow, vec![("gone".into(), format!("!{SHA512}"))]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn explicit_retirement_locks_unmanaged_accounts_once() {
        let accts = accounts(&[
            ("hand", 1004, "Hand Made", Y),
            ("gone", 1005, M, SHA512),
            ("locked", 1006, "x", "!y"),
        ]);
        let mut p = plan(&manifest(&[]), &accts);
        assert_eq!(p.retired, vec!["gone"]);
        retire(&mut p, "hand", &accts);
        retire(&mut p, "gone", &accts);
        retire(&mut p, "locked", &accts);
        retire(&mut p, "missing", &accts);
        assert_eq!(p.retired, vec!["gone", "hand"]);
        assert_eq!(p.set_shadow.len(), 2);
        assert_eq!(p.set_shadow[1], ("hand".into(), format!("!{Y}")));
    }

    #[test]
    fn uid_mismatch_is_reported_not_changed() {
        let p = plan(
            &manifest(&[("alice", Y, false, Some(1500))]),
            &accounts(&[("alice", 1001, M, Y)]),
        );
        assert!(p.is_noop());
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("1500"));
    }

    #[test]
    fn debug_hides_shadow_fields() {
        let p = plan(
            &manifest(&[("alice", Y, false, None)]),
            &Accounts::default(),
        );
        assert!(!format!("{p:?}").contains("$y$"));
    }

    #[test]
    fn locking_helpers() {
        assert_eq!(desired_shadow(Y, true), format!("!{Y}"));
        assert_eq!(desired_shadow("*", true), "*");
        assert_eq!(desired_shadow(Y, false), Y);
        assert_eq!(locked_shadow("!x"), "!x");
        assert_eq!(locked_shadow("x"), "!x");
    }
}
