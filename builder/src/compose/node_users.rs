//! Local users of the image, written straight into `/etc/passwd`, `shadow`, `group` and
//! `gshadow` of the tree instead of running `useradd` chrooted: the result depends only on
//! the recipe and the base (no dates from the clock, no lock files, no host tools), so two
//! builds give the same bytes.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::recipe::schema::User;

/// First uid/gid handed out to a user without an explicit uid (Debian's FIRST_UID).
const FIRST_UID: u32 = 1000;
const LAST_UID: u32 = 59999;

/// The account databases of a tree, as text, edited in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: String,
    pub shadow: String,
    pub group: String,
    pub gshadow: String,
}

/// A user added by [`Accounts::add_user`]: where its home is and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn push_line(text: &mut String, line: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
}

impl Accounts {
    /// uid (or gid) of `name` in the passwd (or group) text.
    pub fn lookup(text: &str, name: &str) -> Option<u32> {
        entries(text)
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(2).and_then(|v| v.parse().ok()))
    }

    fn ids(text: &str) -> Vec<u32> {
        entries(text)
            .filter_map(|f| f.get(2).and_then(|v| v.parse().ok()))
            .collect()
    }

    fn next_free(taken: &[u32]) -> Result<u32> {
        (FIRST_UID..=LAST_UID)
            .find(|i| !taken.contains(i))
            .context("no free uid/gid left between 1000 and 59999")
    }

    /// Add `user` with its own group, supplementary groups and a locked password (`*`:
    /// no password login; SSH keys still work).
    pub fn add_user(&mut self, user: &User) -> Result<AddedUser> {
        let name = user.name.as_str();
        if Self::lookup(&self.passwd, name).is_some() {
            bail!("user `{name}` already exists in the base image");
        }
        if Self::lookup(&self.group, name).is_some() {
            bail!("a group named `{name}` already exists in the base image; it would become user `{name}`'s group");
        }
        let uids = Self::ids(&self.passwd);
        let gids = Self::ids(&self.group);
        let uid = match user.uid {
            Some(u) if uids.contains(&u) => bail!("user `{name}`: uid {u} is already taken"),
            Some(u) => u,
            None => {
                // The next uid that is free as a gid too, so uid == gid as useradd does.
                let taken: Vec<u32> = uids.iter().chain(gids.iter()).copied().collect();
                Self::next_free(&taken)?
            }
        };
        let gid = if gids.contains(&uid) {
            Self::next_free(&gids)?
        } else {
            uid
        };
        for g in &user.groups {
            if Self::lookup(&self.group, g).is_none() {
                bail!("user `{name}`: group `{g}` does not exist in the image (install the package that creates it, or drop it from os.user.groups)");
            }
        }
        let home = format!("/home/{name}");
        push_line(
            &mut self.passwd,
            &format!("{name}:x:{uid}:{gid}::{home}:{}", user.shell),
        );
        push_line(&mut self.shadow, &format!("{name}:*::0:99999:7:::"));
        push_line(&mut self.group, &format!("{name}:x:{gid}:"));
        push_line(&mut self.gshadow, &format!("{name}:!::"));
        for g in &user.groups {
            self.group = add_member(&self.group, g, name, 3);
            self.gshadow = add_member(&self.gshadow, g, name, 3);
        }
        Ok(AddedUser {
            name: name.to_owned(),
            uid,
            gid,
            home,
        })
    }

    /// Set root's password hash, or lock password login (`*`) when there is none.
    pub fn set_root_password(&mut self, hash: Option<&str>) -> Result<()> {
        let value = hash.unwrap_or("*");
        if value.contains([':', '\n']) {
            bail!("the root password hash contains `:` or a newline");
        }
        let mut found = false;
        let mut out = String::new();
        for line in self.shadow.lines() {
            let mut fields: Vec<&str> = line.split(':').collect();
            if fields.first() == Some(&"root") && fields.len() > 1 {
                fields[1] = value;
                found = true;
            }
            out.push_str(&fields.join(":"));
            out.push('\n');
        }
        if !found {
            bail!("/etc/shadow of the base image has no root entry");
        }
        self.shadow = out;
        Ok(())
    }
}

/// Append `member` to the member list (field `idx`) of group `group`.
fn add_member(text: &str, group: &str, member: &str, idx: usize) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut fields: Vec<String> = line.split(':').map(str::to_owned).collect();
        if fields.first().map(String::as_str) == Some(group) && fields.len() > idx {
            let members = &mut fields[idx];
            if !members.split(',').any(|m| m == member) {
                if !members.is_empty() {
                    members.push(',');
                }
                members.push_str(member);
            }
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    out
}

/// Read the four databases of `tree` (missing ones read as empty).
pub fn read_accounts(tree: &Path) -> Result<Accounts> {
    let read = |name: &str| -> Result<String> {
        let p = tree.join("etc").join(name);
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    };
    Ok(Accounts {
        passwd: read("passwd")?,
        shadow: read("shadow")?,
        group: read("group")?,
        gshadow: read("gshadow")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Accounts {
        Accounts {
            passwd: "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".into(),
            shadow: "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n".into(),
            group: "root:x:0:\nsudo:x:27:\nadm:x:4:syslog\nops2:x:1000:\n".into(),
            gshadow: "root:*::\nsudo:*::\nadm:*::syslog\nops2:!::\n".into(),
        }
    }

    fn user(toml_text: &str) -> User {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn adds_user_with_free_ids_and_groups() {
        let mut a = base();
        let u = a
            .add_user(&user("name = \"ops\"\ngroups = [\"sudo\", \"adm\"]"))
            .unwrap();
        // 1000 is taken as a gid, so the user gets 1001 for both.
        assert_eq!((u.uid, u.gid), (1001, 1001));
        assert!(a.passwd.ends_with("ops:x:1001:1001::/home/ops:/bin/bash\n"));
        assert!(a.shadow.ends_with("ops:*::0:99999:7:::\n"));
        assert!(a.group.contains("sudo:x:27:ops\n"));
        assert!(a.group.contains("adm:x:4:syslog,ops\n"));
        assert!(a.gshadow.contains("adm:*::syslog,ops\n"));
        assert!(a.group.ends_with("ops:x:1001:\n"));
        // Deterministic: same input, same bytes.
        let mut b = base();
        b.add_user(&user("name = \"ops\"\ngroups = [\"sudo\", \"adm\"]"))
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_duplicates_and_unknown_groups() {
        let mut a = base();
        assert!(a.add_user(&user("name = \"root\"")).is_err());
        let e = a
            .add_user(&user("name = \"x\"\ngroups = [\"docker\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("group `docker` does not exist"), "{e}");
        assert!(a.add_user(&user("name = \"y\"\nuid = 65534")).is_err());
    }

    #[test]
    fn root_password() {
        let mut a = base();
        a.set_root_password(Some("$6$salt$hash")).unwrap();
        assert!(a.shadow.starts_with("root:$6$salt$hash:19000:"));
        a.set_root_password(None).unwrap();
        assert!(a.shadow.starts_with("root:*:19000:"));
    }
}
