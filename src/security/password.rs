//! Client passwords (issue 16): Argon2id hashes in PHC form (`$argon2id$v=19$m=...`), made
//! by `raftlog passwd` and checked by the client API (`api::auth`).
//!
//! Argon2id is slow on purpose (about 20 ms with the crate's default cost, 19 MiB, 2
//! passes), so that a stolen config file does not give away weak passwords cheaply. The API
//! therefore never verifies once per request: it keeps a verified credential in memory for a
//! few minutes (`api::auth`).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Why a `password_hash` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHash {
    /// Not a PHC string at all.
    #[error(
        "not a PHC hash string ({0}); expected \"$argon2id$v=19$m=...,t=...,p=...$SALT$HASH\""
    )]
    NotPhc(String),
    /// A PHC string of another algorithm (argon2i, argon2d, bcrypt, ...).
    #[error("the hash uses {0:?}, not argon2id")]
    NotArgon2id(String),
    /// Argon2id, but with parameters the argon2 crate refuses.
    #[error("an argon2id hash with unusable parameters ({0})")]
    BadParams(String),
}

/// Checks that `phc` is an Argon2id hash this build can verify.
pub fn check_hash(phc: &str) -> Result<(), BadHash> {
    let hash = PasswordHash::new(phc).map_err(|e| BadHash::NotPhc(e.to_string()))?;
    if hash.algorithm != argon2::Algorithm::Argon2id.ident() {
        return Err(BadHash::NotArgon2id(hash.algorithm.to_string()));
    }
    argon2::Params::try_from(&hash).map_err(|e| BadHash::BadParams(e.to_string()))?;
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err(BadHash::NotPhc("no salt or no hash".to_string()));
    }
    Ok(())
}

/// A failure to hash a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot hash the password with Argon2id: {0}")]
pub struct HashFailed(String);

/// Hashes `password` with Argon2id, a fresh random salt and the crate's default cost.
pub fn hash(password: &[u8]) -> Result<String, HashFailed> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashFailed(e.to_string()))
}

/// Whether `password` matches `phc` (false as well for a hash that does not parse, which
/// the config check refuses at start). Slow: run it off the async threads.
pub fn verify(password: &[u8], phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash(b"correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert_eq!(check_hash(&phc), Ok(()));
        assert!(verify(b"correct horse", &phc));
        assert!(!verify(b"correct horsf", &phc));
    }

    #[test]
    fn other_hashes_are_refused_with_the_reason() {
        assert!(matches!(check_hash("secret"), Err(BadHash::NotPhc(_))));
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$ZmFrZWhhc2hmYWtlaGFzaA";
        assert!(matches!(check_hash(argon2i), Err(BadHash::NotArgon2id(_))));
        let no_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ";
        assert!(check_hash(no_hash).is_err());
    }
}
