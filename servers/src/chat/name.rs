//! Chat names: which names a client may ask for, and how a taken name is made
//! unique the way ouistiti does it (`bob`, `bob1`, `bob2`, ...).
//!
//! Which names are taken is the room's knowledge; this module gets it as a predicate.

/// The longest name, in characters (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 32;

/// Why a requested name was refused; the text follows `WSError invalid name: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// `WSHello ` with nothing after the space.
    #[error("empty")]
    Empty,
    /// More than [`MAX_NAME_LEN`] characters.
    #[error("longer than {MAX_NAME_LEN} characters")]
    TooLong,
    /// A character outside `[A-Za-z0-9_.-]`.
    #[error("character {0:?} not allowed (only A-Z a-z 0-9 _ . -)")]
    BadCharacter(char),
}

/// Checks that `name` has 1 to [`MAX_NAME_LEN`] characters, all from `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    match name.chars().find(|&c| !is_name_char(c)) {
        Some(bad) => Err(NameError::BadCharacter(bad)),
        None => Ok(()),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// `requested` if it is free, else `requested` followed by the smallest number
/// that makes it free. The base is shortened when the number would make the
/// name longer than [`MAX_NAME_LEN`], so a unique name is always valid.
///
/// `requested` must be valid ([`validate_name`]) and `is_taken` must hold for
/// finitely many names, which a room of connected clients guarantees.
pub fn unique_name(requested: &str, is_taken: impl Fn(&str) -> bool) -> String {
    if !is_taken(requested) {
        return requested.to_owned();
    }
    let mut suffix: u64 = 1;
    loop {
        let digits = suffix.to_string();
        let base_len = requested
            .len()
            .min(MAX_NAME_LEN.saturating_sub(digits.len()));
        // Valid names are ASCII, so every byte index is a character boundary;
        // `get` keeps an invalid name from panicking all the same.
        let base = requested.get(..base_len).unwrap_or(requested);
        let candidate = format!("{base}{digits}");
        if !is_taken(&candidate) {
            return candidate;
        }
        suffix = suffix.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_one_to_thirty_two_safe_characters() {
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("bob", Ok(())),
            ("B0b_the.builder-2", Ok(())),
            ("a", Ok(())),
            (&"x".repeat(32), Ok(())),
            ("", Err(NameError::Empty)),
            (&"x".repeat(33), Err(NameError::TooLong)),
            (&"é".repeat(33), Err(NameError::TooLong)),
            ("bob smith", Err(NameError::BadCharacter(' '))),
            (" bob", Err(NameError::BadCharacter(' '))),
            ("bob\n", Err(NameError::BadCharacter('\n'))),
            ("zoé", Err(NameError::BadCharacter('é'))),
            ("a/b", Err(NameError::BadCharacter('/'))),
        ];
        for (name, expected) in cases {
            assert_eq!(&validate_name(name), expected, "validating {name:?}");
        }
    }

    #[test]
    fn name_errors_read_well_after_the_prefix() {
        assert_eq!(NameError::Empty.to_string(), "empty");
        assert_eq!(NameError::TooLong.to_string(), "longer than 32 characters");
        assert_eq!(
            NameError::BadCharacter(' ').to_string(),
            "character ' ' not allowed (only A-Z a-z 0-9 _ . -)"
        );
    }

    fn check(requested: &str, taken: &[&str], expected: &str) {
        let taken: HashSet<&str> = taken.iter().copied().collect();
        let unique = unique_name(requested, |candidate| taken.contains(candidate));
        assert_eq!(unique, expected, "{requested:?} with {taken:?} taken");
        assert_eq!(validate_name(&unique), Ok(()));
    }

    #[test]
    fn taken_names_get_the_smallest_free_suffix() {
        check("bob", &[], "bob");
        check("bob", &["alice"], "bob");
        check("bob", &["bob"], "bob1");
        check("bob", &["bob", "bob1"], "bob2");
        check("bob", &["bob", "bob2"], "bob1");
        check("bob1", &["bob1"], "bob11");
        let many: Vec<String> = std::iter::once("bob".to_owned())
            .chain((1..=9).map(|n| format!("bob{n}")))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        check("bob", &many, "bob10");
    }

    #[test]
    fn suffixed_names_stay_within_the_length_limit() {
        let long = "x".repeat(32);
        check(&long, &[&long], &format!("{}1", "x".repeat(31)));
        let first = format!("{}1", "x".repeat(31));
        check(&long, &[&long, &first], &format!("{}2", "x".repeat(31)));
        let thirty_one = "y".repeat(31);
        check(&thirty_one, &[&thirty_one], &format!("{thirty_one}1"));
    }
}
