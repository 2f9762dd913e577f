//! Password hashing and generation: Argon2id through the `argon2` crate, with
//! its default (OWASP-recommended) parameters and a random 16-byte salt.
//!
//! Stored hashes are PHC strings (`$argon2id$v=19$m=...`), so the parameters
//! travel with each hash and can be raised later without breaking old ones.
//! Storing them is `store`'s job; no clear-text password leaves this module.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Length of a generated password, in characters of [`ALPHABET`] (about 119 bits).
const GENERATED_LENGTH: usize = 20;

/// The characters of a generated password: unambiguous to type and to quote in a shell.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Why a hash could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The system's random source failed.
    #[error("no randomness available: {0}")]
    Random(getrandom::Error),
    /// Argon2 refused its input (a password over its size limit, say).
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
}

/// The PHC string of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).map_err(PasswordError::Random)?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(PasswordError::Hash)?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(PasswordError::Hash)?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `stored`. A stored value that is
/// not a PHC string matches nothing.
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// A new random password of [`GENERATED_LENGTH`] alphanumeric characters.
pub fn generate_password() -> Result<String, PasswordError> {
    // Rejection sampling keeps every character equally likely: 62 * 4 = 248.
    let limit = (u8::MAX as usize / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut password = String::with_capacity(GENERATED_LENGTH);
    let mut byte = [0u8; 1];
    while password.len() < GENERATED_LENGTH {
        getrandom::fill(&mut byte).map_err(PasswordError::Random)?;
        if byte[0] < limit {
            password.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let first = hash_password("s3cret").expect("hashes");
        let second = hash_password("s3cret").expect("hashes");
        assert!(first.starts_with("$argon2id$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        assert!(verify_password("s3cret", &first));
        assert!(!verify_password("s3cret ", &first));
        assert!(
            !verify_password("s3cret", "s3cret"),
            "clear text never matches"
        );
    }

    #[test]
    fn generated_passwords_are_long_and_alphanumeric() {
        let first = generate_password().expect("generates");
        let second = generate_password().expect("generates");
        assert_eq!(first.len(), GENERATED_LENGTH);
        assert!(first.chars().all(|c| c.is_ascii_alphanumeric()), "{first}");
        assert_ne!(first, second);
    }
}
