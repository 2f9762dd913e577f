//! The failure budget of password checks: per user name and per client
//! address, a few free failures, then a lock that doubles with each further
//! failure up to a ceiling, forgotten after a quiet period.
//!
//! A locked attempt is answered at once with its own error code and the time
//! left (the caller's job, in `lib.rs`): nothing sleeps, no hashing slot or
//! thread is held while a lock runs out. An attempt is charged *before* its
//! password is checked and refunded on success, so concurrent sessions cannot
//! slip more guesses past the budget than there are sessions. Time comes in
//! as a parameter (`now`), so tests drive it without waiting.
//!
//! The budget is kept per name whether or not such a user exists, so a lock
//! says nothing about which names are accounts.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How one kind of key (user names, client addresses) is budgeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures allowed before the first lock.
    pub free_failures: u32,
    /// The lock after the first failure over the budget; each further one doubles it.
    pub first_lock: Duration,
    /// The longest lock.
    pub max_lock: Duration,
    /// A key with no failure for this long starts again from zero.
    pub forget_after: Duration,
}

impl Policy {
    /// Per user name: 5 free failures, then 1 s, 2 s, 4 s... up to 5 minutes,
    /// so a guesser gets about 20 guesses in the first 15 minutes and then 12
    /// an hour; forgotten after 15 quiet minutes.
    pub const USER: Policy = Policy {
        free_failures: 5,
        first_lock: Duration::from_secs(1),
        max_lock: Duration::from_secs(300),
        forget_after: Duration::from_secs(900),
    };

    /// Per client address: 20 free failures (several people behind one NAT),
    /// then the same growing lock, whatever user names it tries.
    pub const ADDRESS: Policy = Policy {
        free_failures: 20,
        first_lock: Duration::from_secs(1),
        max_lock: Duration::from_secs(300),
        forget_after: Duration::from_secs(900),
    };

    /// The lock after `n_failures` failures; zero within the free budget.
    fn lock_after(&self, n_failures: u32) -> Duration {
        let Some(n_over) = n_failures.checked_sub(self.free_failures) else {
            return Duration::ZERO;
        };
        if n_over == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (n_over - 1).min(20);
        self.first_lock.saturating_mul(factor).min(self.max_lock)
    }
}

/// Most keys remembered per kind; beyond it, forgotten keys are dropped, then
/// the one whose last failure is oldest. About 100 bytes each.
pub const MAX_KEYS: usize = 100_000;

/// The failures of one key.
#[derive(Debug, Clone, Copy)]
struct Entry {
    n_failures: u32,
    last_failure: Instant,
    locked_until: Instant,
}

/// The budgets of one kind of key.
#[derive(Debug)]
struct Budgets {
    policy: Policy,
    capacity: usize,
    entries: HashMap<String, Entry>,
}

impl Budgets {
    fn new(policy: Policy, capacity: usize) -> Budgets {
        Budgets {
            policy,
            capacity,
            entries: HashMap::new(),
        }
    }

    /// The time left of `key`'s lock, if it is locked.
    fn locked(&self, key: &str, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        let left = entry.locked_until.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }

    /// Counts one failure of `key` and locks it if over the budget.
    fn charge(&mut self, key: &str, now: Instant) {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        let forget_after = self.policy.forget_after;
        let entry = self.entries.entry(key.to_owned()).or_insert(Entry {
            n_failures: 0,
            last_failure: now,
            locked_until: now,
        });
        if now.saturating_duration_since(entry.last_failure) >= forget_after {
            entry.n_failures = 0;
        }
        entry.n_failures = entry.n_failures.saturating_add(1);
        entry.last_failure = now;
        entry.locked_until = now + self.policy.lock_after(entry.n_failures);
    }

    /// Takes back one charge of `key` (its attempt succeeded), and the lock
    /// it set, if any.
    fn refund(&mut self, key: &str) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.n_failures = entry.n_failures.saturating_sub(1);
            entry.locked_until = entry.last_failure + self.policy.lock_after(entry.n_failures);
            if entry.n_failures == 0 {
                self.entries.remove(key);
            }
        }
    }

    /// Forgets `key` entirely.
    fn clear(&mut self, key: &str) {
        self.entries.remove(key);
    }

    fn make_room(&mut self, now: Instant) {
        let forget_after = self.policy.forget_after;
        self.entries.retain(|_, entry| {
            now.saturating_duration_since(entry.last_failure) < forget_after
                || entry.locked_until > now
        });
        if self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_failure)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
    }
}

/// The budgets of user names and client addresses, shared by every session.
#[derive(Debug)]
pub struct Throttle {
    budgets: Mutex<(Budgets, Budgets)>,
}

/// An attempt refused because a budget is spent: try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// When the lock (the longer one, if both are locked) runs out.
    pub retry_after: Duration,
}

impl Throttle {
    /// Budgets with these policies, at most `capacity` keys of each kind.
    pub fn new(user: Policy, address: Policy, capacity: usize) -> Throttle {
        Throttle {
            budgets: Mutex::new((
                Budgets::new(user, capacity),
                Budgets::new(address, capacity),
            )),
        }
    }

    /// Admits one password check of `user` from `address` at `now`, charging
    /// both a failure in advance, or refuses it if either is locked. A `None`
    /// user (a name no account can have) is charged to the address only.
    pub fn admit(&self, user: Option<&str>, address: &str, now: Instant) -> Result<(), Locked> {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let (users, addresses) = &mut *budgets;
        let user_lock = user.and_then(|user| users.locked(user, now));
        let address_lock = addresses.locked(address, now);
        if let Some(retry_after) = user_lock.max(address_lock) {
            return Err(Locked { retry_after });
        }
        if let Some(user) = user {
            users.charge(user, now);
        }
        addresses.charge(address, now);
        Ok(())
    }

    /// The admitted check succeeded: the user's failures are forgotten and the
    /// address's charge is refunded (the address keeps its earlier failures,
    /// so logging into one's own account does not reset a guessing budget).
    pub fn succeeded(&self, user: &str, address: &str) {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let (users, addresses) = &mut *budgets;
        users.clear(user);
        addresses.refund(address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn policy(free_failures: u32) -> Policy {
        Policy {
            free_failures,
            first_lock: SECOND,
            max_lock: 8 * SECOND,
            forget_after: 100 * SECOND,
        }
    }

    #[test]
    fn locks_double_after_the_free_failures_up_to_the_ceiling() {
        let check = |n_failures: u32, expected_secs: u64| {
            assert_eq!(
                policy(3).lock_after(n_failures),
                Duration::from_secs(expected_secs),
                "after {n_failures} failures"
            );
        };
        for (n_failures, expected_secs) in [
            (0, 0),
            (3, 0),
            (4, 1),
            (5, 2),
            (6, 4),
            (7, 8),
            (8, 8),
            (u32::MAX, 8),
        ] {
            check(n_failures, expected_secs);
        }
    }

    #[test]
    fn a_user_is_locked_after_its_free_failures_whatever_the_address() {
        let throttle = Throttle::new(policy(2), policy(100), MAX_KEYS);
        let t0 = Instant::now();
        // Two free failures, then the third sets a 1 s lock.
        for (idx, address) in ["a", "b", "c"].into_iter().enumerate() {
            throttle
                .admit(Some("bob"), address, t0)
                .unwrap_or_else(|_| panic!("attempt {idx} is admitted"));
        }
        assert_eq!(
            throttle.admit(Some("bob"), "d", t0),
            Err(Locked {
                retry_after: SECOND
            })
        );
        assert_eq!(
            throttle.admit(Some("alice"), "d", t0),
            Ok(()),
            "other users are free"
        );
        // A refused attempt is not charged: after the lock, one more failure locks for 2 s.
        throttle
            .admit(Some("bob"), "d", t0 + SECOND)
            .expect("the lock ran out");
        assert_eq!(
            throttle.admit(Some("bob"), "d", t0 + SECOND),
            Err(Locked {
                retry_after: 2 * SECOND
            })
        );
        // Success forgets the user's failures.
        throttle
            .admit(Some("bob"), "d", t0 + 3 * SECOND)
            .expect("the lock ran out");
        throttle.succeeded("bob", "d");
        for _ in 0..3 {
            throttle
                .admit(Some("bob"), "d", t0 + 3 * SECOND)
                .expect("free again");
        }
    }

    #[test]
    fn an_address_is_locked_whatever_the_user_names_and_success_does_not_reset_it() {
        let throttle = Throttle::new(policy(100), policy(3), MAX_KEYS);
        let t0 = Instant::now();
        for name in ["a", "b"] {
            throttle.admit(Some(name), "10.0.0.1", t0).expect("free");
        }
        // The attacker's own account logs in: refunded, and it sets no lock.
        throttle.admit(Some("mine"), "10.0.0.1", t0).expect("free");
        throttle.succeeded("mine", "10.0.0.1");
        throttle
            .admit(None, "10.0.0.1", t0)
            .expect("the third failure");
        throttle
            .admit(Some("d"), "10.0.0.1", t0)
            .expect("the fourth sets a lock");
        assert_eq!(
            throttle.admit(Some("e"), "10.0.0.1", t0),
            Err(Locked {
                retry_after: SECOND
            })
        );
        assert_eq!(throttle.admit(Some("e"), "10.0.0.2", t0), Ok(()));
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_period() {
        let throttle = Throttle::new(policy(1), policy(100), MAX_KEYS);
        let t0 = Instant::now();
        throttle.admit(Some("bob"), "a", t0).expect("free");
        throttle.admit(Some("bob"), "a", t0).expect("sets a lock");
        assert!(throttle.admit(Some("bob"), "a", t0).is_err());
        let later = t0 + 100 * SECOND;
        throttle
            .admit(Some("bob"), "a", later)
            .expect("forgotten: free again");
        throttle
            .admit(Some("bob"), "a", later)
            .expect("the second sets a 1 s lock");
        assert_eq!(
            throttle.admit(Some("bob"), "a", later),
            Err(Locked {
                retry_after: SECOND
            })
        );
    }

    #[test]
    fn memory_is_bounded_and_forgotten_keys_go_first() {
        let throttle = Throttle::new(policy(5), policy(1000), 3);
        let t0 = Instant::now();
        throttle.admit(Some("old"), "a", t0).expect("free");
        let later = t0 + 100 * SECOND;
        for name in ["x", "y", "z"] {
            throttle.admit(Some(name), "a", later).expect("free");
        }
        let budgets = throttle.budgets.lock().expect("not poisoned");
        let mut names: Vec<&str> = budgets.0.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["x", "y", "z"], "the forgotten key made room");
        drop(budgets);
        throttle
            .admit(Some("w"), "a", later + SECOND)
            .expect("free");
        let budgets = throttle.budgets.lock().expect("not poisoned");
        assert_eq!(budgets.0.entries.len(), 3);
        assert!(
            budgets.0.entries.contains_key("w"),
            "the newest key is kept"
        );
    }
}
