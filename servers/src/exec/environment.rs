//! The CGI-like environment of a program run for one client, built from the
//! client's OPEN metadata the way websocketd builds its own (`docs/exec.md`
//! lists every variable). Nothing of the backend's own environment is in it
//! except what `--passenv` names; starting the program is `program`'s job.

use std::ffi::OsString;
use std::net::SocketAddr;

use backend::OpenMeta;

/// The variables a program gets, in the order they are set (later ones win).
pub type Environment = Vec<(OsString, OsString)>;

/// The environment of the program serving the client of `meta`: first the
/// `passed` variables of the backend's own environment (`--passenv`), then
/// the CGI variables, which win over a passed variable of the same name.
///
/// A variable whose name or value could not be passed to `execve` (a NUL
/// byte, a header name that is not a token) is left out rather than failing
/// the client.
pub fn program_environment(meta: &OpenMeta, passed: &[(OsString, OsString)]) -> Environment {
    let mut environment: Environment = passed.to_vec();
    let mut set = |name: &str, value: &str| {
        if !value.contains('\0') {
            environment.push((OsString::from(name), OsString::from(value)));
        }
    };
    set("GATEWAY_INTERFACE", "websocketd-CGI/0.1");
    set(
        "SERVER_SOFTWARE",
        concat!("wsgate-websocket_exec/", env!("CARGO_PKG_VERSION")),
    );
    set("SERVER_PROTOCOL", "HTTP/1.1");
    set("REQUEST_METHOD", "GET");
    match meta.peer.parse::<SocketAddr>() {
        Ok(peer) => {
            let address = peer.ip().to_canonical().to_string();
            set("REMOTE_ADDR", &address);
            set("REMOTE_HOST", &address);
            set("REMOTE_PORT", &peer.port().to_string());
        }
        Err(_) => {
            set("REMOTE_ADDR", &meta.peer);
            set("REMOTE_HOST", &meta.peer);
        }
    }
    let default_port = if meta.tls.is_some() { "443" } else { "80" };
    if let Some(host) = meta.headers.get("host") {
        let (server_name, server_port) = split_host(host);
        set("SERVER_NAME", server_name);
        set("SERVER_PORT", server_port.unwrap_or(default_port));
    }
    set("SCRIPT_NAME", &meta.path);
    set("PATH_INFO", "");
    set("QUERY_STRING", &meta.query);
    let request_uri = if meta.query.is_empty() {
        meta.path.clone()
    } else {
        format!("{}?{}", meta.path, meta.query)
    };
    set("REQUEST_URI", &request_uri);
    set("UNIQUE_ID", &meta.id.to_string());
    set("WSGATE_NAME", &meta.name);
    if let Some(tls) = &meta.tls {
        set("HTTPS", "on");
        if let Some(sni) = &tls.sni {
            set("SSL_TLS_SNI", sni);
        }
        if let Some(subject) = &tls.client_subject {
            set("SSL_CLIENT_S_DN", subject);
        }
    }
    if let Some(identity) = &meta.identity {
        set("WSGATE_IDENTITY", &identity.to_string());
    }
    for (name, value) in &meta.headers {
        if let Some(variable) = header_variable(name) {
            set(&variable, value);
        }
    }
    environment
}

/// `HTTP_USER_AGENT` for `user-agent`: upper case, `-` as `_`. `None` for a
/// name that is not an HTTP token of letters, digits, `-` and `_`.
fn header_variable(name: &str) -> Option<String> {
    let is_plain = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    is_plain.then(|| format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_")))
}

/// Splits a `Host` header into the server name and its port, if it names one:
/// `example.com:8080` → (`example.com`, `8080`), `[::1]:80` → (`[::1]`, `80`).
fn split_host(host: &str) -> (&str, Option<&str>) {
    let port_start = match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => colon,
        _ => return (host, None),
    };
    let port = &host[port_start + 1..];
    if port.is_empty() || !port.bytes().all(|byte| byte.is_ascii_digit()) {
        return (host, None);
    }
    (&host[..port_start], Some(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OPEN as the gateway writes it, with `extra` JSON fields appended.
    fn meta_with(extra: &str) -> OpenMeta {
        let json = format!(
            r#"{{"version":1,"mode":"framed","id":42,"name":"calc","path":"/calc",
                "query":"precision=3&x=%20","peer":"127.0.0.1:50312",
                "headers":{{"host":"example.com:8080","user-agent":"curl/8","x-forwarded-for":"10.0.0.1"}}{extra}}}"#
        );
        OpenMeta::from_payload(json.as_bytes()).expect("valid OPEN")
    }

    fn lookup<'a>(environment: &'a Environment, name: &str) -> Option<&'a str> {
        environment
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.to_str())
    }

    #[test]
    fn cgi_variables_come_from_open() {
        let environment = program_environment(&meta_with(""), &[]);
        let check = |name: &str, expected: Option<&str>| {
            assert_eq!(lookup(&environment, name), expected, "{name}");
        };
        check("REMOTE_ADDR", Some("127.0.0.1"));
        check("REMOTE_PORT", Some("50312"));
        check("SERVER_NAME", Some("example.com"));
        check("SERVER_PORT", Some("8080"));
        check("SERVER_PROTOCOL", Some("HTTP/1.1"));
        check("REQUEST_METHOD", Some("GET"));
        check("SCRIPT_NAME", Some("/calc"));
        check("PATH_INFO", Some(""));
        check("QUERY_STRING", Some("precision=3&x=%20"));
        check("REQUEST_URI", Some("/calc?precision=3&x=%20"));
        check("HTTP_HOST", Some("example.com:8080"));
        check("HTTP_USER_AGENT", Some("curl/8"));
        check("HTTP_X_FORWARDED_FOR", Some("10.0.0.1"));
        check("UNIQUE_ID", Some("42"));
        check("WSGATE_NAME", Some("calc"));
        check("HTTPS", None);
        check("WSGATE_IDENTITY", None);
        check("PATH", None);
    }

    #[test]
    fn tls_and_identity_reach_the_program() {
        let mut meta = meta_with(
            r#","tls":{"sni":"example.com","client_subject":"CN=alice"},"identity":{"user":"alice","groups":["admin"]}"#,
        );
        meta.headers
            .insert("host".to_owned(), "example.com".to_owned());
        let environment = program_environment(&meta, &[]);
        assert_eq!(lookup(&environment, "HTTPS"), Some("on"));
        assert_eq!(lookup(&environment, "SERVER_PORT"), Some("443"));
        assert_eq!(lookup(&environment, "SSL_TLS_SNI"), Some("example.com"));
        assert_eq!(lookup(&environment, "SSL_CLIENT_S_DN"), Some("CN=alice"));
        let identity: serde_json::Value = serde_json::from_str(
            lookup(&environment, "WSGATE_IDENTITY").expect("WSGATE_IDENTITY set"),
        )
        .expect("WSGATE_IDENTITY is JSON");
        assert_eq!(
            identity,
            serde_json::json!({"user": "alice", "groups": ["admin"]})
        );
    }

    #[test]
    fn passed_variables_come_first_and_cgi_variables_win() {
        let passed = [
            (OsString::from("PATH"), OsString::from("/usr/bin:/bin")),
            (
                OsString::from("QUERY_STRING"),
                OsString::from("from the backend"),
            ),
        ];
        let environment = program_environment(&meta_with(""), &passed);
        assert_eq!(lookup(&environment, "PATH"), Some("/usr/bin:/bin"));
        assert_eq!(
            lookup(&environment, "QUERY_STRING"),
            Some("precision=3&x=%20")
        );
    }

    #[test]
    fn odd_headers_and_peers_are_left_out_or_normalised() {
        let mut meta = meta_with("");
        meta.headers.insert("bad header".to_owned(), "x".to_owned());
        meta.headers.insert("cookie".to_owned(), "a\0b".to_owned());
        meta.peer = "[::ffff:127.0.0.1]:9".to_owned();
        let environment = program_environment(&meta, &[]);
        assert!(
            environment
                .iter()
                .all(|(name, _)| name != "HTTP_BAD HEADER")
        );
        assert_eq!(lookup(&environment, "HTTP_COOKIE"), None);
        assert_eq!(lookup(&environment, "REMOTE_ADDR"), Some("127.0.0.1"));
        assert_eq!(lookup(&environment, "REMOTE_PORT"), Some("9"));
    }

    #[test]
    fn host_splits_into_name_and_port() {
        let check = |host: &str, expected: (&str, Option<&str>)| {
            assert_eq!(split_host(host), expected, "{host}");
        };
        check("example.com", ("example.com", None));
        check("example.com:8080", ("example.com", Some("8080")));
        check("[::1]", ("[::1]", None));
        check("[::1]:443", ("[::1]", Some("443")));
        check("example.com:", ("example.com:", None));
        check("example.com:x", ("example.com:x", None));
    }
}
