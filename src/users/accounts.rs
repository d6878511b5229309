//! The accounts that exist in /etc: parsing /etc/passwd and /etc/shadow text (pure) and
//! reading them from disk.

use std::collections::BTreeMap;
use std::path::Path;

use crate::manifest::SystemFacts;

/// GECOS comment occ-init puts on the accounts it creates: the record of which users it
/// manages lives with the accounts themselves, so it cannot drift from /etc.
pub const MANAGED_GECOS: &str = "occ-init managed user";

/// One account as /etc sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gecos: String,
    pub home: String,
    /// The password field of /etc/shadow, when the account has a shadow entry.
    pub shadow: Option<String>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("uid", &self.uid)
            .field("gecos", &self.gecos)
            .field("home", &self.home)
            .field("shadow", &self.shadow.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Account {
    pub fn is_managed(&self) -> bool {
        self.gecos == MANAGED_GECOS
    }
}

/// All accounts, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    pub by_name: BTreeMap<String, Account>,
    /// Names of the groups in /etc/group (useradd cannot create a user named like one).
    pub groups: std::collections::BTreeSet<String>,
}

impl Accounts {
    /// Build from the text of /etc/passwd and /etc/shadow. Malformed lines are skipped.
    pub fn parse(passwd: &str, shadow: &str) -> Accounts {
        let mut by_name = BTreeMap::new();
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() || f[0].starts_with('+') || f[0].starts_with('-') {
                continue;
            }
            let Ok(uid) = f[2].parse() else { continue };
            by_name.insert(
                f[0].to_string(),
                Account {
                    uid,
                    gecos: f[4].to_string(),
                    home: f[5].to_string(),
                    shadow: None,
                },
            );
        }
        for line in shadow.lines() {
            let mut f = line.splitn(3, ':');
            if let (Some(name), Some(pw)) = (f.next(), f.next()) {
                if let Some(acct) = by_name.get_mut(name) {
                    acct.shadow = Some(pw.to_string());
                }
            }
        }
        Accounts {
            by_name,
            groups: Default::default(),
        }
    }

    /// Read `<etc>/passwd` and `<etc>/shadow`; an error names the file that failed.
    pub fn read(etc: &Path) -> Result<Accounts, (std::path::PathBuf, std::io::Error)> {
        let read = |name: &str| {
            let path = etc.join(name);
            std::fs::read_to_string(&path).map_err(|e| (path, e))
        };
        let mut a = Accounts::parse(&read("passwd")?, &read("shadow")?);
        a.groups = std::fs::read_to_string(etc.join("group"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(':').next())
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        Ok(a)
    }

    pub fn get(&self, name: &str) -> Option<&Account> {
        self.by_name.get(name)
    }

    /// Facts for manifest validation: every account's uid plus the reserved names.
    pub fn facts(&self, reserved: &[&str]) -> SystemFacts {
        let mut facts = SystemFacts::with_reserved(reserved.iter().copied());
        facts.accounts = self
            .by_name
            .iter()
            .map(|(n, a)| (n.clone(), a.uid))
            .collect();
        facts.groups = self.groups.iter().cloned().collect();
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\n\
        alice:x:1001:1001:occ-init managed user:/home/alice:/bin/bash\n\
        broken line\n\
        bob:x:notanumber:1:x:/:/bin/sh\n";
    const SHADOW: &str =
        "root:*:19000:0:99999:7:::\nalice:$y$abc:19000:0:99999:7:::\nghost:!:1::::::\n";

    #[test]
    fn parses_passwd_and_shadow() {
        let a = Accounts::parse(PASSWD, SHADOW);
        assert_eq!(a.by_name.len(), 3);
        let alice = a.get("alice").unwrap();
        assert_eq!(alice.uid, 1001);
        assert!(alice.is_managed());
        assert_eq!(alice.shadow.as_deref(), Some("$y$abc"));
        assert!(!a.get("ubuntu").unwrap().is_managed());
        assert_eq!(a.get("ubuntu").unwrap().shadow, None);
        assert!(a.get("ghost").is_none());
        assert!(!format!("{alice:?}").contains("$y$"));
    }

    #[test]
    fn facts_carry_uids_and_reserved_names() {
        let f = Accounts::parse(PASSWD, SHADOW).facts(&["opencoder"]);
        assert_eq!(f.accounts["root"], 0);
        assert!(f.reserved.contains("opencoder"));
        assert!(f.reserved.contains("root"));
    }
}
