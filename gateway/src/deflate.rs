//! permessage-deflate negotiation (RFC 7692 section 7.1): which names may use
//! it ([`DeflateNames`]), and the client's `Sec-WebSocket-Extensions` offers
//! turned into the agreed parameters and the response header ([`negotiate`]).
//!
//! The first offer of permessage-deflate this gateway can honour wins. An
//! offer with an unknown parameter, a repeated one, a value where none
//! belongs or a window size outside 8 to 15 is declined (RFC 7692 section 5),
//! and so is every offer of a header that does not parse as RFC 6455's
//! extension list: the handshake then goes on without compression, never
//! with a 400, since a client must cope with a server that declines.
//!
//! The answer always carries `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692 sections 7.1.1.1 and 7.1.1.2 let a
//! server include both even when not offered): no side keeps a compression
//! context between messages, so an idle client costs the gateway no deflate
//! state at all (`link::deflate`). A `server_max_window_bits` offered is
//! honoured and answered; `client_max_window_bits` is never answered (our
//! inflater takes any window up to 15 bits). Compressing and inflating is
//! `link::deflate`'s job.

use http::HeaderMap;
use http::header::{HeaderValue, SEC_WEBSOCKET_EXTENSIONS};
use link::DeflateParams;
use link::deflate::{MAX_WINDOW_BITS, MIN_WINDOW_BITS};

use crate::access::{GlobError, GlobList};

/// The extension token.
const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// Most extension offers read from one request; the rest are ignored.
/// Browsers send one or two.
const MAX_OFFERS: usize = 16;

/// Most parameters one offer may carry; an offer with more is declined.
const MAX_PARAMS: usize = 8;

/// Which names negotiate permessage-deflate: every name unless `--no-deflate`,
/// or a name matching a `--no-deflate-for` glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeflateNames {
    disabled: bool,
    excluded: GlobList,
}

impl DeflateNames {
    /// `disabled` turns it off for every name; `globs` for the names they match.
    pub(crate) fn new(disabled: bool, globs: &[String]) -> Result<DeflateNames, GlobError> {
        Ok(DeflateNames {
            disabled,
            excluded: GlobList::new(globs)?,
        })
    }

    /// Whether a client of `name` may have its messages compressed.
    pub(crate) fn is_enabled(&self, name: &str) -> bool {
        !self.disabled && !self.excluded.matches(name)
    }
}

/// An accepted permessage-deflate offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Agreement {
    /// What both sides apply.
    pub(crate) params: DeflateParams,
    /// The `Sec-WebSocket-Extensions` value of the `101`.
    pub(crate) response: HeaderValue,
}

/// The first permessage-deflate offer of `headers` this gateway can honour,
/// or `None` (nothing offered, every offer declined, or a malformed header).
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<Agreement> {
    // Every header line is one list (RFC 7230's `#rule`): all of them must
    // parse before any offer is taken.
    let mut offers = Vec::new();
    for value in headers.get_all(SEC_WEBSOCKET_EXTENSIONS) {
        let Ok(value) = value.to_str() else {
            tracing::debug!("Sec-WebSocket-Extensions is not ASCII; deflate declined");
            return None;
        };
        let Some(parsed) = parse_extensions(value) else {
            tracing::debug!("malformed Sec-WebSocket-Extensions; deflate declined");
            return None;
        };
        offers.extend(parsed);
        if offers.len() > MAX_OFFERS {
            return None;
        }
    }
    offers
        .iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
        .find_map(|offer| accept(&offer.params))
}

/// The agreement for one offer's parameters, or `None` to decline it.
fn accept(params: &[(String, Option<String>)]) -> Option<Agreement> {
    if params.len() > MAX_PARAMS {
        return None;
    }
    let mut server_no_context_takeover = false;
    let mut client_no_context_takeover = false;
    let mut server_max_window_bits = None;
    let mut client_max_window_bits = None;
    for (name, value) in params {
        let name = name.to_ascii_lowercase();
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) if !server_no_context_takeover => {
                server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !client_no_context_takeover => {
                client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(value)) if server_max_window_bits.is_none() => {
                server_max_window_bits = Some(window_bits(value)?);
            }
            ("client_max_window_bits", value) if client_max_window_bits.is_none() => {
                client_max_window_bits = Some(match value {
                    Some(value) => window_bits(value)?,
                    None => MAX_WINDOW_BITS,
                });
            }
            // Unknown, repeated, or a value where none belongs (or none where one must be).
            _ => return None,
        }
    }
    let mut response =
        format!("{PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_max_window_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(Agreement {
        params: DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
            client_max_window_bits: client_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
        },
        response: HeaderValue::from_str(&response).expect("the response is ASCII"),
    })
}

/// A window size: 8 to 15, decimal, no leading zero (RFC 7692 section 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || value.starts_with('0') {
        return None;
    }
    if !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
        .contains(&bits)
        .then_some(bits)
}

/// One extension of the list: its token and its parameters, values unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension's token, e.g. `permessage-deflate`.
    pub name: String,
    /// Its parameters in order, each with its value if it has one.
    pub params: Vec<(String, Option<String>)>,
}

/// Parses RFC 6455 section 9.1's `extension-list` (comma-separated
/// extensions, each a token with `;`-separated `token[=token|quoted-string]`
/// parameters, optional white space around separators, empty list elements
/// skipped as RFC 7230's `#rule` allows). `None` if it does not parse.
/// Linear in the input.
pub fn parse_extensions(value: &str) -> Option<Vec<ExtensionOffer>> {
    let mut parser = Parser {
        bytes: value.as_bytes(),
        at: 0,
    };
    let mut offers = Vec::new();
    loop {
        parser.skip_ows();
        match parser.peek() {
            None => return Some(offers),
            Some(b',') => {
                parser.at += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = parser.token()?;
        let mut params = Vec::new();
        loop {
            parser.skip_ows();
            match parser.peek() {
                None | Some(b',') => break,
                Some(b';') => parser.at += 1,
                Some(_) => return None,
            }
            parser.skip_ows();
            let param = parser.token()?;
            parser.skip_ows();
            let value = if parser.peek() == Some(b'=') {
                parser.at += 1;
                parser.skip_ows();
                Some(if parser.peek() == Some(b'"') {
                    parser.quoted_string()?
                } else {
                    parser.token()?
                })
            } else {
                None
            };
            params.push((param, value));
        }
        offers.push(ExtensionOffer { name, params });
    }
}

/// A cursor over a header value.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// One or more RFC 7230 `tchar`s.
    fn token(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(is_token_byte) {
            self.at += 1;
        }
        let token = self.bytes.get(start..self.at)?;
        (!token.is_empty()).then(|| String::from_utf8_lossy(token).into_owned())
    }

    /// A quoted string, unescaped; RFC 6455 requires its content to be a token.
    fn quoted_string(&mut self) -> Option<String> {
        self.at += 1;
        let mut content = Vec::new();
        loop {
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    content.push(self.peek()?);
                    self.at += 1;
                }
                _ => content.push(byte),
            }
        }
        (!content.is_empty() && content.iter().copied().all(is_token_byte))
            .then(|| String::from_utf8_lossy(&content).into_owned())
    }
}

/// RFC 7230 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(offered: &[&str], expected: Option<&str>) {
        let mut headers = HeaderMap::new();
        for value in offered {
            headers.append(
                SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(value).expect("test header"),
            );
        }
        let agreed = negotiate(&headers);
        assert_eq!(
            agreed
                .as_ref()
                .map(|agreement| agreement.response.to_str().expect("ascii")),
            expected,
            "{offered:?}"
        );
    }

    const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn what_browsers_offer_is_accepted_without_context_takeover() {
        // Chromium, Firefox, Safari.
        check(&["permessage-deflate; client_max_window_bits"], Some(BOTH));
        check(&["permessage-deflate"], Some(BOTH));
        check(&["x-webkit-deflate-frame, permessage-deflate"], Some(BOTH));
        check(&[], None);
    }

    #[test]
    fn one_malformed_header_line_declines_the_offers_of_every_line() {
        // Found by the deflate_offer fuzz target: a good first line used to
        // be taken before a malformed second one was read.
        check(&["permessage-deflate", "foo;=bar"], None);
        check(&["foo;=bar", "permessage-deflate"], None);
        check(&["x-other", "permessage-deflate"], Some(BOTH));
    }

    #[test]
    fn a_server_window_is_honoured_and_answered() {
        check(
            &["permessage-deflate; server_max_window_bits=10"],
            Some(&format!("{BOTH}; server_max_window_bits=10")),
        );
        check(
            &["permessage-deflate; server_max_window_bits=\"8\"; client_max_window_bits=9"],
            Some(&format!("{BOTH}; server_max_window_bits=8")),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; server_max_window_bits=9"),
        );
        let params = negotiate(&headers).expect("agreed").params;
        assert_eq!(params.server_max_window_bits, 9);
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
    }

    #[test]
    fn unacceptable_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; unknown_param",
        ] {
            check(&[bad], None);
            check(
                &[&format!(
                    "{bad}, permessage-deflate; client_no_context_takeover"
                )],
                Some(BOTH),
            );
        }
        // Offers spread over two header lines count in order.
        check(
            &[
                "permessage-deflate; x=1",
                "permessage-deflate; server_max_window_bits=12",
            ],
            Some(&format!("{BOTH}; server_max_window_bits=12")),
        );
    }

    #[test]
    fn a_malformed_header_declines_everything() {
        for bad in [
            "permessage-deflate;",
            "permessage-deflate; =1",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate server_no_context_takeover",
            "per message-deflate",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
        ] {
            check(&[bad], None);
        }
    }

    #[test]
    fn the_extension_list_parses_per_rfc_6455() {
        let offers = parse_extensions(" foo ;a=1; b = \"x\\y\" ,, bar\t").expect("valid");
        assert_eq!(
            offers,
            [
                ExtensionOffer {
                    name: "foo".into(),
                    params: vec![
                        ("a".into(), Some("1".into())),
                        ("b".into(), Some("xy".into()))
                    ],
                },
                ExtensionOffer {
                    name: "bar".into(),
                    params: vec![]
                },
            ]
        );
        assert_eq!(parse_extensions(""), Some(Vec::new()));
    }

    #[test]
    fn deflate_can_be_turned_off_for_all_or_some_names() {
        let names = DeflateNames::new(false, &["legacy-*".to_owned()]).expect("valid");
        assert!(names.is_enabled("chat"));
        assert!(!names.is_enabled("legacy-x"));
        let none = DeflateNames::new(true, &[]).expect("valid");
        assert!(!none.is_enabled("chat"));
    }
}
