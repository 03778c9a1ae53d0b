//! `-u` / the image's `User`: `name`, `uid`, `name:group`, `uid:gid`, resolved in the
//! container's own /etc/passwd and /etc/group (as runc does), with the user's supplementary
//! groups and home directory.

/// Who the command runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from /etc/group.
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of each /etc/group line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` against the container's passwd and group files (empty text when the file
/// does not exist). A numeric user need not exist (gid 0, home `/`); a name must. As runc's
/// GetExecUser, an empty part is none: `app:` is `app` (its groups included), `:staff` and
/// `:` are root's (uid 0, the default user) with that group or root's own.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ExecUser, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| format!("user {user:?} is not in the image's /etc/passwd"))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user.parse().unwrap_or(0),
    };
    let mut gid = entry.as_ref().map(|e| e.gid).unwrap_or(0);
    let home = entry
        .as_ref()
        .map(|e| e.home.to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, id, _)| id)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        };
    }
    let groups = match (&entry, grp) {
        (Some(e), None) => group_entries(group)
            .filter(|(_, id, members)| members.contains(&e.name) && *id != gid)
            .map(|(_, id, _)| id)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nstaff:x:50:\n";

    #[test]
    fn users_resolve_like_runc() {
        let r = |s| resolve(s, PASSWD, GROUP);
        assert_eq!(
            r("app").unwrap(),
            ExecUser {
                uid: 1000,
                gid: 1000,
                groups: vec![10],
                home: "/home/app".into()
            }
        );
        assert_eq!(r("1000").unwrap().home, "/home/app");
        let n = r("4242").unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 0, "/"));
        let g = r("app:staff").unwrap();
        assert_eq!((g.uid, g.gid, g.groups.len()), (1000, 50, 0));
        assert_eq!(r("0:5").unwrap().gid, 5);
        assert!(r("nobody").unwrap_err().contains("/etc/passwd"));
        assert!(r("app:nogroup").unwrap_err().contains("/etc/group"));
        assert!(resolve("1:2", "", "").is_ok());
        // Before: `app:` failed with `group "" is not in the image's /etc/group`, and `:staff`
        // with "no user". runc (podman exec -u app:) reads an empty part as none.
        assert_eq!(r("app:").unwrap(), r("app").unwrap());
        let root = r(":staff").unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 50, "/root"));
        assert!(root.groups.is_empty());
        assert_eq!(r(":").unwrap(), r("0").unwrap());
        assert_eq!(r(":").unwrap().home, "/root");
        let bare = resolve(":", "", "").unwrap();
        assert_eq!((bare.uid, bare.gid, bare.home.as_str()), (0, 0, "/"));
    }
}
