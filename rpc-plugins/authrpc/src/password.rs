//! Password hashing and generation: Argon2id through the `argon2` crate, with
//! the OWASP-recommended parameters (19 MiB, 2 passes, 1 lane) and a random
//! 16-byte salt, and a [`Hasher`] that bounds how many hashes run at once.
//!
//! Each hash or check holds [`MEMORY_PER_HASH_KIB`] KiB (19 MiB) of memory
//! and one core for its duration (tens of milliseconds), so [`Hasher`] lets at
//! most one per core run at a time (`available_parallelism`): with 2 cores
//! that is 38 MiB of hashing memory at most, however many clients ask. Calls
//! over the bound wait in a queue (a blocked thread, not a spinning one).
//!
//! Stored hashes are PHC strings (`$argon2id$v=19$m=...`), so the parameters
//! travel with each hash and can be raised later without breaking old ones.
//! Storing them is `store`'s job; no clear-text password leaves this module.

use std::num::NonZeroUsize;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory of one Argon2 hash or check, in KiB (19 MiB; OWASP's first choice).
pub const MEMORY_PER_HASH_KIB: u32 = 19 * 1024;
/// Argon2 passes over that memory.
const PASSES: u32 = 2;
/// Argon2 lanes; one, so one hash is one core's work.
const LANES: u32 = 1;

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

/// A well-formed PHC string with this module's parameters whose hash is made
/// up, so it matches no password; checking against it costs a real check.
pub const UNMATCHABLE_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE";

/// The Argon2id instance with this module's parameters.
fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_PER_HASH_KIB, PASSES, LANES, None)
        .expect("the constant parameters are within Argon2's limits");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes and checks passwords, at most `limit` at once.
#[derive(Debug)]
pub struct Hasher {
    limit: usize,
    slots: Mutex<Slots>,
    slot_freed: Condvar,
}

/// The bookkeeping of [`Hasher`]'s slots.
#[derive(Debug, Default)]
struct Slots {
    in_use: usize,
    /// Most slots ever in use at once (for tests and the bound's proof).
    peak: usize,
    /// Hashes and checks run so far.
    n_runs: u64,
}

impl Hasher {
    /// A hasher running at most one hash per core at once.
    pub fn per_core() -> Hasher {
        Hasher::with_limit(std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
    }

    /// A hasher running at most `limit` (at least 1) hashes at once.
    pub fn with_limit(limit: usize) -> Hasher {
        Hasher {
            limit: limit.max(1),
            slots: Mutex::new(Slots::default()),
            slot_freed: Condvar::new(),
        }
    }

    /// How many hashes may run at once.
    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The most hashes that ran at once so far.
    #[cfg(test)]
    pub fn peak(&self) -> usize {
        self.lock().peak
    }

    /// Hashes and checks run so far.
    #[cfg(test)]
    pub fn n_runs(&self) -> u64 {
        self.lock().n_runs
    }

    /// The PHC string of `password` with a fresh random salt.
    pub fn hash_password(&self, password: &str) -> Result<String, PasswordError> {
        let mut salt_bytes = [0u8; 16];
        getrandom::fill(&mut salt_bytes).map_err(PasswordError::Random)?;
        let salt = SaltString::encode_b64(&salt_bytes).map_err(PasswordError::Hash)?;
        let hash = self
            .in_slot(|| argon2().hash_password(password.as_bytes(), &salt))
            .map_err(PasswordError::Hash)?;
        Ok(hash.to_string())
    }

    /// Whether `password` matches the PHC string `stored`. A stored value that
    /// is not a PHC string matches nothing, and costs a check all the same.
    pub fn verify_password(&self, password: &str, stored: &str) -> bool {
        match PasswordHash::new(stored) {
            Ok(hash) => {
                self.in_slot(|| argon2().verify_password(password.as_bytes(), &hash).is_ok())
            }
            Err(_) => {
                self.verify_password(password, UNMATCHABLE_HASH);
                false
            }
        }
    }

    /// Runs `work` once a slot is free, waiting on a condition variable.
    fn in_slot<T>(&self, work: impl FnOnce() -> T) -> T {
        {
            let mut slots = self
                .slot_freed
                .wait_while(self.lock(), |slots| slots.in_use >= self.limit)
                .unwrap_or_else(PoisonError::into_inner);
            slots.in_use += 1;
            slots.peak = slots.peak.max(slots.in_use);
            slots.n_runs += 1;
        }
        // Frees the slot even if `work` panics.
        struct Release<'a>(&'a Hasher);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.lock().in_use -= 1;
                self.0.slot_freed.notify_one();
            }
        }
        let _release = Release(self);
        work()
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
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
        let hasher = Hasher::with_limit(1);
        let first = hasher.hash_password("s3cret").expect("hashes");
        let second = hasher.hash_password("s3cret").expect("hashes");
        assert!(
            first.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{first}"
        );
        assert_ne!(first, second, "each hash has its own salt");
        assert!(hasher.verify_password("s3cret", &first));
        assert!(!hasher.verify_password("s3cret ", &first));
        assert!(
            !hasher.verify_password("s3cret", "s3cret"),
            "clear text never matches"
        );
        assert_eq!(
            hasher.n_runs(),
            5,
            "a malformed stored value costs a check too"
        );
    }

    #[test]
    fn no_more_hashes_than_the_limit_run_at_once() {
        let hasher = Hasher::with_limit(2);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| hasher.verify_password("guess", UNMATCHABLE_HASH));
            }
        });
        assert_eq!(hasher.n_runs(), 8);
        assert!(hasher.peak() <= 2, "peak {}", hasher.peak());
        let per_core = Hasher::per_core();
        assert_eq!(
            per_core.limit(),
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
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
