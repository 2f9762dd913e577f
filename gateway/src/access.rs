//! Who may reach what: the allow/deny/raw globs on backend names ([`NamePolicy`])
//! and the Origin rule for browser clients ([`OriginPolicy`]).
//!
//! Both are pure decisions on strings; turning a path into a name is `route`'s
//! job, and answering a refusal is `refusal`'s.

use globset::{Glob, GlobSet, GlobSetBuilder};

/// A glob from the configuration that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {glob:?}")]
pub struct GlobError {
    /// The glob as written.
    pub glob: String,
    /// Why globset refused it.
    #[source]
    pub source: globset::Error,
}

/// An Origin from the configuration that is not `*`, `null` or `scheme://host[:port]`.
#[derive(Debug, thiserror::Error)]
#[error("invalid origin {origin:?}: expected `*`, `null` or scheme://host[:port] with no path")]
pub struct OriginError {
    /// The origin as written.
    pub origin: String,
}

/// Compiled globs with the text they came from (kept for logs and comparison).
#[derive(Debug, Clone)]
pub(crate) struct GlobList {
    globs: Vec<String>,
    set: GlobSet,
}

impl GlobList {
    /// Compiles `globs`; the error names the first that does not compile.
    pub(crate) fn new(globs: &[String]) -> Result<GlobList, GlobError> {
        let mut builder = GlobSetBuilder::new();
        for glob in globs {
            let compiled = Glob::new(glob).map_err(|source| GlobError {
                glob: glob.clone(),
                source,
            })?;
            builder.add(compiled);
        }
        let set = builder.build().map_err(|source| GlobError {
            glob: globs.join(" "),
            source,
        })?;
        Ok(GlobList {
            globs: globs.to_vec(),
            set,
        })
    }

    /// Whether `name` matches one of the globs. An empty list answers
    /// without asking the set, which would first prepare the name as a
    /// path (an allocation): most lists are empty (deny, raw, direct, the
    /// deflate exclusions).
    pub(crate) fn matches(&self, name: &str) -> bool {
        !self.set.is_empty() && self.set.is_match(name)
    }
}

impl PartialEq for GlobList {
    fn eq(&self, other: &GlobList) -> bool {
        self.globs == other.globs
    }
}

impl Eq for GlobList {}

/// Which backend names may be reached, and which of them speak raw mode or
/// get their client's socket handed over (direct mode).
///
/// Globs match the whole name, and `*` also matches `/`, so the default allow
/// glob `*` admits nested names such as `group/item`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePolicy {
    allow: GlobList,
    deny: GlobList,
    raw: GlobList,
    direct: GlobList,
}

/// A configuration that puts names in both raw and direct mode.
#[derive(Debug, thiserror::Error)]
#[error(
    "raw glob {raw:?} and direct glob {direct:?} overlap: raw-mode backends cannot take direct mode"
)]
pub struct ModeConflict {
    /// The raw glob.
    pub raw: String,
    /// The direct glob.
    pub direct: String,
}

impl NamePolicy {
    /// Compiles the three glob lists; the error names the first glob that does not compile.
    pub fn new(allow: &[String], deny: &[String], raw: &[String]) -> Result<NamePolicy, GlobError> {
        Ok(NamePolicy {
            allow: GlobList::new(allow)?,
            deny: GlobList::new(deny)?,
            raw: GlobList::new(raw)?,
            direct: GlobList::new(&[])?,
        })
    }

    /// Adds the direct-mode globs. A direct glob that matches a raw glob's
    /// text, or a raw glob that matches a direct glob's text, is a conflict
    /// (`*` against `legacy-*`, `legacy-*` against itself); the relay also
    /// refuses, at run time, any name that matches both.
    pub fn with_direct(mut self, direct: &[String]) -> Result<NamePolicy, DirectGlobError> {
        self.direct = GlobList::new(direct)?;
        for raw in &self.raw.globs {
            for direct in &self.direct.globs {
                if self.direct.set.is_match(raw) || self.raw.set.is_match(direct) {
                    return Err(DirectGlobError::Conflict(ModeConflict {
                        raw: raw.clone(),
                        direct: direct.clone(),
                    }));
                }
            }
        }
        Ok(self)
    }

    /// A name is allowed when it matches an allow glob and no deny glob.
    pub fn is_allowed(&self, name: &str) -> bool {
        self.allow.matches(name) && !self.deny.matches(name)
    }

    /// A name matching a raw glob is relayed in raw mode (no OPEN, bare payloads).
    pub fn is_raw(&self, name: &str) -> bool {
        self.raw.matches(name)
    }

    /// A name matching a direct glob gets its client's socket handed over.
    pub fn is_direct(&self, name: &str) -> bool {
        self.direct.matches(name)
    }
}

/// Why the direct globs cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirectGlobError {
    /// A glob does not compile.
    #[error(transparent)]
    Glob(#[from] GlobError),
    /// Raw and direct globs overlap.
    #[error(transparent)]
    Conflict(#[from] ModeConflict),
}

impl Default for NamePolicy {
    /// Allow everything, deny nothing, no raw names.
    fn default() -> NamePolicy {
        NamePolicy::new(&["*".to_owned()], &[], &[]).expect("literal glob `*` is valid")
    }
}

/// Which `Origin` headers an upgrade may carry.
///
/// A request without `Origin` is always accepted: only browsers send it, and
/// only browsers need protecting from cross-site WebSocket hijacking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OriginPolicy {
    /// The Origin's `host[:port]` must equal the request's `Host` header (default ports ignored).
    #[default]
    SameHost,
    /// Any Origin (`--origin '*'`).
    Any,
    /// One of these exact origins (lower case, without a trailing `/`).
    Listed(Vec<String>),
}

impl OriginPolicy {
    /// The policy for the configured `--origin` values: none is [`OriginPolicy::SameHost`],
    /// any `*` is [`OriginPolicy::Any`], otherwise the list.
    pub fn from_list(origins: &[String]) -> Result<OriginPolicy, OriginError> {
        if origins.is_empty() {
            return Ok(OriginPolicy::SameHost);
        }
        if origins.iter().any(|origin| origin.trim() == "*") {
            return Ok(OriginPolicy::Any);
        }
        let listed = origins
            .iter()
            .map(|origin| {
                let normalized = normalize_origin(origin);
                let valid = normalized == "null" || parse_origin(&normalized).is_some();
                match valid {
                    true => Ok(normalized),
                    false => Err(OriginError {
                        origin: origin.clone(),
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OriginPolicy::Listed(listed))
    }

    /// Whether a request with this `Origin` (if any) and `Host` (if any) may upgrade.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::Listed(listed) => {
                let origin = normalize_origin(origin);
                listed.contains(&origin)
            }
            OriginPolicy::SameHost => host.is_some_and(|host| same_host(origin, host)),
        }
    }
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Splits `scheme://host[:port]` into its scheme and authority; anything with a
/// path, query, user info or an empty host is not an origin.
fn parse_origin(origin: &str) -> Option<(&str, &str)> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let authority_ok = !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && !authority.starts_with(':');
    (scheme_ok && authority_ok).then_some((scheme, authority))
}

fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" | "ws" => Some("80"),
        "https" | "wss" => Some("443"),
        _ => None,
    }
}

/// Splits `host[:port]`, keeping IPv6 literals (`[::1]:8080`) whole.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    let port_colon = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].find(':').map(|idx| bracket + idx),
        None => authority.rfind(':'),
    };
    match port_colon {
        Some(idx) => (&authority[..idx], Some(&authority[idx + 1..])),
        None => (authority, None),
    }
}

fn same_host(origin: &str, host: &str) -> bool {
    let origin = normalize_origin(origin);
    let Some((scheme, authority)) = parse_origin(&origin) else {
        return false;
    };
    let default = default_port(scheme);
    let (origin_host, origin_port) = split_authority(authority);
    let host = host.trim().to_ascii_lowercase();
    let (host_host, host_port) = split_authority(&host);
    origin_host == host_host && origin_port.or(default) == host_port.or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn allow_and_deny_globs_decide_names() {
        // (allow, deny, name, allowed)
        let cases: &[(&[&str], &[&str], &str, bool)] = &[
            (&["*"], &[], "chat", true),
            (&["*"], &[], "group/item", true),
            (&["echo"], &[], "echo", true),
            (&["echo"], &[], "echo2", false),
            (&["secret*"], &["secret*"], "secret", false),
            (&["*"], &["private*"], "private-room", false),
            (&["*"], &["private*"], "public", true),
            (&["group/*"], &[], "group/item", true),
            (&["group/*"], &[], "other/item", false),
            (&[], &[], "anything", false),
            (&["chat", "echo"], &["echo"], "echo", false),
            (&["chat", "echo"], &["echo"], "chat", true),
        ];
        for (allow, deny, name, expected) in cases {
            let policy = NamePolicy::new(&strings(allow), &strings(deny), &[])
                .expect("test globs are valid");
            assert_eq!(
                policy.is_allowed(name),
                *expected,
                "allow {allow:?} deny {deny:?} name {name:?}"
            );
        }
    }

    #[test]
    fn raw_globs_select_raw_names() {
        let policy = NamePolicy::new(&strings(&["*"]), &[], &strings(&["raw-*", "legacy/*"]))
            .expect("test globs are valid");
        assert!(policy.is_raw("raw-echo"));
        assert!(policy.is_raw("legacy/chat"));
        assert!(!policy.is_raw("echo"));
    }

    #[test]
    fn direct_globs_select_direct_names_and_must_not_overlap_raw_ones() {
        let policy = NamePolicy::new(&strings(&["*"]), &[], &strings(&["legacy-*"]))
            .expect("valid")
            .with_direct(&strings(&["fast/*", "echo"]))
            .expect("no overlap");
        assert!(policy.is_direct("fast/echo"));
        assert!(policy.is_direct("echo"));
        assert!(!policy.is_direct("legacy-x"));
        for direct in [&["*"][..], &["legacy-*"], &["legacy-?"]] {
            let raw = NamePolicy::new(&strings(&["*"]), &[], &strings(&["legacy-*"])).expect("ok");
            assert!(
                raw.with_direct(&strings(direct)).is_err(),
                "{direct:?} overlaps legacy-*"
            );
        }
    }

    #[test]
    fn a_bad_glob_is_named_in_the_error() {
        let error = NamePolicy::new(&strings(&["ok", "bad[glob"]), &[], &[])
            .expect_err("an unclosed class is invalid");
        assert_eq!(error.glob, "bad[glob");
        assert!(error.to_string().contains("bad[glob"));
    }

    fn check_origin(
        policy: &OriginPolicy,
        origin: Option<&str>,
        host: Option<&str>,
        expected: bool,
    ) {
        assert_eq!(
            policy.allows(origin, host),
            expected,
            "{policy:?} origin {origin:?} host {host:?}"
        );
    }

    #[test]
    fn same_host_rule_compares_origin_authority_with_host() {
        let policy = OriginPolicy::SameHost;
        // (origin, host, allowed)
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (None, Some("example.com"), true),
            (None, None, true),
            (Some("http://example.com"), Some("example.com"), true),
            (Some("http://EXAMPLE.com"), Some("example.COM"), true),
            (Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080"), true),
            (Some("http://127.0.0.1:8080"), Some("127.0.0.1:9090"), false),
            (Some("http://example.com:80"), Some("example.com"), true),
            (Some("https://example.com"), Some("example.com:443"), true),
            (Some("https://example.com"), Some("example.com:80"), false),
            (Some("http://[::1]:8080"), Some("[::1]:8080"), true),
            (Some("http://evil.example"), Some("example.com"), false),
            (Some("null"), Some("example.com"), false),
            (Some("http://example.com"), None, false),
            (Some("http://example.com/path"), Some("example.com"), false),
            (Some("garbage"), Some("garbage"), false),
        ];
        for (origin, host, expected) in cases {
            check_origin(&policy, *origin, *host, *expected);
        }
    }

    #[test]
    fn listed_origins_match_exactly_and_star_allows_all() {
        let listed = OriginPolicy::from_list(&strings(&["http://trusted.example/", "null"]))
            .expect("valid origins");
        check_origin(&listed, Some("http://trusted.example"), Some("x"), true);
        check_origin(&listed, Some("HTTP://Trusted.Example"), Some("x"), true);
        check_origin(&listed, Some("null"), Some("x"), true);
        check_origin(
            &listed,
            Some("http://trusted.example:8080"),
            Some("x"),
            false,
        );
        check_origin(&listed, Some("http://evil.example"), Some("x"), false);
        check_origin(&listed, None, Some("x"), true);

        let any = OriginPolicy::from_list(&strings(&["http://a.example", "*"])).expect("valid");
        assert_eq!(any, OriginPolicy::Any);
        check_origin(&any, Some("http://evil.example"), Some("x"), true);

        assert_eq!(
            OriginPolicy::from_list(&[]).expect("empty"),
            OriginPolicy::SameHost
        );
        for bad in [
            "example.com",
            "http://",
            "http://a.example/path",
            "http://user@a.example",
        ] {
            assert!(
                OriginPolicy::from_list(&strings(&[bad])).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn origin_parsing_never_panics(origins in proptest::collection::vec(".{0,40}", 0..4),
                                       origin in proptest::option::of(".{0,40}"),
                                       host in proptest::option::of(".{0,40}")) {
            if let Ok(policy) = OriginPolicy::from_list(&origins) {
                let _ = policy.allows(origin.as_deref(), host.as_deref());
            }
            let _ = OriginPolicy::SameHost.allows(origin.as_deref(), host.as_deref());
        }

        #[test]
        fn the_same_host_is_always_allowed_and_another_never(
            name in "[a-z][a-z0-9-]{0,15}(\\.[a-z]{2,6})?",
            port in proptest::option::of(1u16..),
            other in "[a-z][a-z0-9-]{0,15}",
            scheme in prop_oneof![Just("http"), Just("https")],
        ) {
            let host = match port {
                Some(port) => format!("{name}:{port}"),
                None => name.clone(),
            };
            let origin = format!("{scheme}://{host}");
            prop_assert!(OriginPolicy::SameHost.allows(Some(&origin), Some(&host)));
            prop_assume!(other != name);
            let foreign = format!("{scheme}://{other}.invalid");
            prop_assert!(!OriginPolicy::SameHost.allows(Some(&foreign), Some(&host)));
        }
    }
}
