//! Privilege drop: started as root with `user` set, Portico binds first and then switches to
//! that user and group for good; as root without `user` it refuses unless `allow_root`.

use std::path::Path;

use nix::unistd::{chown, setgid, setgroups, setuid, Gid, Group, Uid, User};

use crate::Error;

/// What to become after binding.
#[derive(Debug, Clone, Default)]
pub struct PrivilegeConfig {
    pub user: Option<String>,
    pub group: Option<String>,
    pub allow_root: bool,
}

/// Switches to the configured user and group; hands them `owned_dirs` first (the data and
/// log directories and the open log files, so services can write and logs can rotate).
/// Returns the user now in effect.
pub fn drop_privileges(config: &PrivilegeConfig, owned_dirs: &[&Path]) -> Result<String, Error> {
    let running_as_root = Uid::effective().is_root();
    match (&config.user, running_as_root) {
        (Some(name), true) => become_user(name, config.group.as_deref(), owned_dirs),
        (Some(name), false) => already_user(name),
        (None, true) if config.allow_root => Ok("root".into()),
        (None, true) => Err(Error::Privilege(
            "refusing to serve as root: set user = \"NAME\" to drop privileges after binding, \
             or allow_root = true"
                .into(),
        )),
        (None, false) => Ok(current_user_name()),
    }
}

fn become_user(name: &str, group: Option<&str>, owned_dirs: &[&Path]) -> Result<String, Error> {
    let user = lookup_user(name)?;
    let gid = match group {
        Some(group) => lookup_group(group)?,
        None => user.gid,
    };
    for dir in owned_dirs {
        chown(*dir, Some(user.uid), Some(gid))
            .map_err(|e| Error::Privilege(format!("handing {} to {name}: {e}", dir.display())))?;
    }
    let failed = |what: &str, e: nix::Error| Error::Privilege(format!("{what} for {name}: {e}"));
    setgroups(&[gid]).map_err(|e| failed("setgroups", e))?;
    setgid(gid).map_err(|e| failed("setgid", e))?;
    setuid(user.uid).map_err(|e| failed("setuid", e))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(Error::Privilege(format!(
            "still able to regain root after becoming {name}"
        )));
    }
    Ok(name.to_string())
}

fn already_user(name: &str) -> Result<String, Error> {
    let user = lookup_user(name)?;
    if user.uid == Uid::effective() {
        Ok(name.to_string())
    } else {
        Err(Error::Privilege(format!(
            "user = {name:?} needs Portico started as root (running as {})",
            current_user_name()
        )))
    }
}

fn lookup_user(name: &str) -> Result<User, Error> {
    User::from_name(name)
        .map_err(|e| Error::Privilege(format!("looking up user {name:?}: {e}")))?
        .ok_or_else(|| Error::Privilege(format!("user {name:?} does not exist")))
}

fn lookup_group(name: &str) -> Result<Gid, Error> {
    Group::from_name(name)
        .map_err(|e| Error::Privilege(format!("looking up group {name:?}: {e}")))?
        .map(|group| group.gid)
        .ok_or_else(|| Error::Privilege(format!("group {name:?} does not exist")))
}

fn current_user_name() -> String {
    let uid = Uid::effective();
    User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| uid.to_string())
}
