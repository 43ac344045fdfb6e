//! What a client may do (issue 16). Roles are ordered: each one has the rights of those
//! below it, as etcd's and rqlite's permission sets are in practice (read ⊂ write ⊂ admin).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A client's rights. Without authentication configured every client is `Admin`, as today.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: `GET` of keys and ranges, status, watch, the log.
    Read,
    /// Reads, and `PUT`/`DELETE`/CAS of keys.
    Write,
    /// Writes, and membership, leader transfer and snapshots.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Read, Role::Write, Role::Admin];

    /// Whether a client holding `self` may do what needs `needed`.
    pub fn permits(self, needed: Role) -> bool {
        self >= needed
    }

    /// The name used in config files, certificates and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `read`, `write` or `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected \"read\", \"write\" or \"admin\"")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_has_the_rights_of_the_weaker_ones_only() {
        assert!(Role::Admin.permits(Role::Write) && Role::Admin.permits(Role::Read));
        assert!(Role::Write.permits(Role::Read) && Role::Write.permits(Role::Write));
        assert!(!Role::Write.permits(Role::Admin));
        assert!(!Role::Read.permits(Role::Write));
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!("root".parse::<Role>(), Err(UnknownRole("root".to_string())));
    }
}
