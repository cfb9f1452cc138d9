//! Privilege drop: started as root with `user` set, Portico binds and opens what it needs
//! first and then switches to that user and group for good; as root without `user` it
//! refuses unless `allow_root`.
//!
//! Before switching, the directories the unprivileged user must write (data and log
//! directories) are handed to it, but only those Portico created itself: a directory that
//! already existed must already belong to that user, or Portico refuses to start, naming it.
//! Handing over whatever the config names would give `data_dir = "/var/lib"` to `nobody`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{chown, setgid, setgroups, setuid, Gid, Group, Uid, User};

/// What to become after binding.
#[derive(Debug, Clone, Default)]
pub struct PrivilegeConfig {
    pub user: Option<String>,
    pub group: Option<String>,
    pub allow_root: bool,
}

/// A path the unprivileged user must own, and whether Portico created it (only then may it
/// change the owner).
#[derive(Debug, Clone)]
pub struct Handover {
    pub path: PathBuf,
    pub created: bool,
}

/// Why the switch to the configured user failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "refusing to serve as root: set user = \"NAME\" to drop privileges after binding, \
         or allow_root = true"
    )]
    RootRefused,
    #[error("user = {user:?} needs Portico started as root (running as {current})")]
    NeedsRoot { user: String, current: String },
    #[error("{kind} {name:?} does not exist")]
    Unknown { kind: &'static str, name: String },
    #[error("looking up {kind} {name:?}: {error}")]
    Lookup {
        kind: &'static str,
        name: String,
        error: nix::Error,
    },
    #[error(
        "{path} belongs to {owner}, not to {user}, and Portico did not create it: Portico \
         changes the owner only of directories it creates; run `chown {user} {path}` or \
         choose another directory"
    )]
    NotOwned {
        path: String,
        owner: String,
        user: String,
    },
    #[error("reading the owner of {path}: {error}")]
    Stat { path: String, error: std::io::Error },
    #[error("handing {path} to {user}: {error}")]
    Chown {
        path: String,
        user: String,
        error: nix::Error,
    },
    #[error("{step} for {user}: {error}")]
    Switch {
        step: &'static str,
        user: String,
        error: nix::Error,
    },
    #[error("still able to regain root after becoming {user}")]
    RegainedRoot { user: String },
}

/// Switches to the configured user and group after handing it `handover` (see the module
/// doc). Returns the user now in effect.
pub fn drop_privileges(
    config: &PrivilegeConfig,
    handover: &[Handover],
) -> Result<String, PrivilegeError> {
    let running_as_root = Uid::effective().is_root();
    match (&config.user, running_as_root) {
        (Some(name), true) => become_user(name, config.group.as_deref(), handover),
        (Some(name), false) => already_user(name),
        (None, true) if config.allow_root => Ok("root".into()),
        (None, true) => Err(PrivilegeError::RootRefused),
        (None, false) => Ok(current_user_name()),
    }
}

fn become_user(
    name: &str,
    group: Option<&str>,
    handover: &[Handover],
) -> Result<String, PrivilegeError> {
    let user = lookup_user(name)?;
    let gid = match group {
        Some(group) => lookup_group(group)?,
        None => user.gid,
    };
    // Check everything before changing anything: a refusal leaves every owner as it was.
    for item in handover.iter().filter(|item| !item.created) {
        check_owned_by(&item.path, &user)?;
    }
    for item in handover.iter().filter(|item| item.created) {
        chown(&item.path, Some(user.uid), Some(gid)).map_err(|error| PrivilegeError::Chown {
            path: item.path.display().to_string(),
            user: name.to_string(),
            error,
        })?;
    }
    switch_to(name, user.uid, gid)?;
    Ok(name.to_string())
}

/// A directory Portico did not create must already belong to the user.
fn check_owned_by(path: &Path, user: &User) -> Result<(), PrivilegeError> {
    let metadata = std::fs::metadata(path).map_err(|error| PrivilegeError::Stat {
        path: path.display().to_string(),
        error,
    })?;
    if metadata.uid() == user.uid.as_raw() {
        return Ok(());
    }
    Err(PrivilegeError::NotOwned {
        path: path.display().to_string(),
        owner: user_name(Uid::from_raw(metadata.uid())),
        user: user.name.clone(),
    })
}

fn switch_to(name: &str, uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    let failed = |step: &'static str| {
        move |error| PrivilegeError::Switch {
            step,
            user: name.to_string(),
            error,
        }
    };
    setgroups(&[gid]).map_err(failed("setgroups"))?;
    setgid(gid).map_err(failed("setgid"))?;
    setuid(uid).map_err(failed("setuid"))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::RegainedRoot {
            user: name.to_string(),
        });
    }
    Ok(())
}

fn already_user(name: &str) -> Result<String, PrivilegeError> {
    let user = lookup_user(name)?;
    if user.uid == Uid::effective() {
        Ok(name.to_string())
    } else {
        Err(PrivilegeError::NeedsRoot {
            user: name.to_string(),
            current: current_user_name(),
        })
    }
}

fn lookup_user(name: &str) -> Result<User, PrivilegeError> {
    User::from_name(name)
        .map_err(|error| PrivilegeError::Lookup {
            kind: "user",
            name: name.to_string(),
            error,
        })?
        .ok_or_else(|| PrivilegeError::Unknown {
            kind: "user",
            name: name.to_string(),
        })
}

fn lookup_group(name: &str) -> Result<Gid, PrivilegeError> {
    Group::from_name(name)
        .map_err(|error| PrivilegeError::Lookup {
            kind: "group",
            name: name.to_string(),
            error,
        })?
        .map(|group| group.gid)
        .ok_or_else(|| PrivilegeError::Unknown {
            kind: "group",
            name: name.to_string(),
        })
}

fn current_user_name() -> String {
    user_name(Uid::effective())
}

fn user_name(uid: Uid) -> String {
    User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}
