//! From request path to backend socket: traversal attempts never reach a
//! socket outside the docroot (or a hidden one), nested names and the
//! directory-plus-subprotocol rule do reach theirs, OPEN describes the client
//! truthfully, and static files come from htdocs and nowhere else.
//!
//! Every socket is an in-process [`FakeBackend`] that counts its links, so
//! "never reached" is checked on the backend's side, not inferred from a status.

use std::path::Path;

use harness::{
    AcceptReply, Backend, FakeBackend, FakeBehaviour, Gateway, HandshakeRequest, LinkEvent, Message,
};
use link::LinkMode;
use tempfile::TempDir;

fn echo_behaviour() -> FakeBehaviour {
    FakeBehaviour::Echo(AcceptReply::default())
}

/// `outer/` holding a socket `x` outside the docroot `outer/root/`, which
/// holds sockets `x` and `.hidden`, a directory `a/`, and a symlink `link`
/// pointing at the outside socket.
struct TraversalLayout {
    outer: TempDir,
    outside: FakeBackend,
    inside: FakeBackend,
    hidden: FakeBackend,
}

impl TraversalLayout {
    fn create() -> anyhow::Result<TraversalLayout> {
        let outer = tempfile::tempdir()?;
        let docroot = outer.path().join("root");
        std::fs::create_dir_all(docroot.join("a"))?;
        let outside = FakeBackend::start(&outer.path().join("x"), echo_behaviour())?;
        let inside = FakeBackend::start(&docroot.join("x"), echo_behaviour())?;
        let hidden = FakeBackend::start(&docroot.join(".hidden"), echo_behaviour())?;
        std::os::unix::fs::symlink(outside.socket_path(), docroot.join("link"))?;
        std::os::unix::fs::symlink("../x", docroot.join("relative-link"))?;
        Ok(TraversalLayout {
            outer,
            outside,
            inside,
            hidden,
        })
    }

    fn docroot(&self) -> std::path::PathBuf {
        self.outer.path().join("root")
    }
}

#[tokio::test]
async fn traversal_attempts_are_refused_and_never_reach_a_backend() -> anyhow::Result<()> {
    let layout = TraversalLayout::create()?;
    let gateway = Gateway::start(&layout.docroot(), &[]).await?;
    let over_long_name = format!("/{}", "n".repeat(300));
    // The README's promise, status by status: 400 for `..`, `.`, empty and
    // hidden segments and control characters, 414 for a name too long for a
    // socket path, 403 for a symlink out of the docroot.
    let attempts: [(&str, u16); 17] = [
        ("/../x", 400),
        ("/%2e%2e/x", 400),
        ("/%2E%2E/x", 400),
        ("/%2e%2e%2fx", 400),
        ("/a/../../x", 400),
        ("/a/%2e%2e/%2e%2e/x", 400),
        ("/.hidden", 400),
        ("/%2ehidden", 400),
        ("//x", 400),
        ("/./x", 400),
        ("/x/", 400),
        ("/x%00y", 400),
        ("/x%00", 400),
        ("/x%1fy", 400),
        (over_long_name.as_str(), 414),
        ("/link", 403),
        ("/relative-link", 403),
    ];
    for (path, status) in attempts {
        let response = gateway.handshake(&HandshakeRequest::new(path)).await?;
        assert_eq!(response.status, status, "{path}: {response}");
        let n_links = [
            ("outside the docroot", layout.outside.n_links()),
            ("x inside the docroot", layout.inside.n_links()),
            (".hidden", layout.hidden.n_links()),
        ];
        for (which, n) in n_links {
            assert_eq!(n, 0, "{path} reached the backend {which}");
        }
    }
    // The layout works: the plain name reaches the socket inside.
    let response = gateway.handshake(&HandshakeRequest::new("/x")).await?;
    assert_eq!(response.status, 101, "/x: {response}");
    assert_eq!(layout.inside.n_links(), 1);
    assert_eq!(layout.outside.n_links(), 0);
    Ok(())
}

#[tokio::test]
async fn nested_name_reaches_the_socket_in_its_subdirectory() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "group/item", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut client = gateway.connect("/group/item").await?;
    assert_eq!(
        client.round_trip(Message::text("nested")).await?,
        Message::text("nested")
    );
    Ok(())
}

#[tokio::test]
async fn open_record_describes_the_client() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let reply = AcceptReply {
        protocol: Some("superchat".to_owned()),
        ..AcceptReply::default()
    };
    let mut backend = FakeBackend::start(&docroot.path().join("meta"), FakeBehaviour::Echo(reply))?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut client = gateway
        .connect_with_headers(
            "/meta?room=1&x=y",
            &[("Sec-WebSocket-Protocol", "chat, superchat")],
        )
        .await?;
    let meta = backend.expect_open().await?;
    assert_eq!(meta.version, link::LINK_VERSION);
    assert_eq!(meta.mode, LinkMode::Framed);
    assert_eq!(meta.name, "meta");
    assert_eq!(meta.path, "/meta");
    assert_eq!(meta.query, "room=1&x=y");
    assert_eq!(meta.protocols, ["chat", "superchat"]);
    assert_eq!(meta.peer, client.tcp().local_addr()?.to_string());
    // The backend's choice is the one value answered, never the offered list.
    let protocol = client.response().headers().get("sec-websocket-protocol");
    assert_eq!(
        protocol.map(|value| value.to_str().unwrap_or_default()),
        Some("superchat")
    );
    assert_eq!(
        client.round_trip(Message::text("after open")).await?,
        Message::text("after open")
    );
    match backend.next_record_or_end().await? {
        LinkEvent::Received { record, .. } => {
            assert_eq!(record, harness::Record::Text("after open".into()));
        }
        other => panic!("expected the TEXT record, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn directory_path_picks_the_socket_named_by_the_subprotocol() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let service = docroot.path().join("service");
    let mut chat = FakeBackend::start(&service.join("chat"), echo_behaviour())?;
    let mut rpc = FakeBackend::start(&service.join("rpc"), echo_behaviour())?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    for (protocol, backend) in [("chat", &mut chat), ("rpc", &mut rpc)] {
        let client = gateway
            .connect_with_headers("/service", &[("Sec-WebSocket-Protocol", protocol)])
            .await?;
        let answered = client.response().headers().get("sec-websocket-protocol");
        assert_eq!(
            answered.map(|value| value.to_str().unwrap_or_default()),
            Some(protocol)
        );
        let meta = backend.expect_open().await?;
        assert_eq!(meta.name, format!("service/{protocol}"));
    }
    assert_eq!((chat.n_links(), rpc.n_links()), (1, 1));
    Ok(())
}

fn write_htdocs(htdocs: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(htdocs)?;
    std::fs::write(
        htdocs.join("index.html"),
        "<!doctype html><title>wsgate</title>",
    )?;
    std::fs::write(htdocs.join("style.css"), "body { margin: 0 }")?;
    std::fs::write(htdocs.join("app.js"), "console.log('hi');")?;
    Ok(())
}

#[tokio::test]
async fn static_files_are_served_from_htdocs_with_their_mime_type() -> anyhow::Result<()> {
    let outer = tempfile::tempdir()?;
    let htdocs = outer.path().join("www");
    write_htdocs(&htdocs)?;
    let docroot = outer.path().join("sockets");
    std::fs::create_dir_all(&docroot)?;
    let htdocs_arg = htdocs.display().to_string();
    let gateway = Gateway::start(&docroot, &["--htdocs", &htdocs_arg]).await?;
    // (path, content type prefix, body)
    let cases = [
        // The README's promise: `/` serves index.html.
        ("/", "text/html", "<!doctype html><title>wsgate</title>"),
        (
            "/index.html",
            "text/html",
            "<!doctype html><title>wsgate</title>",
        ),
        ("/style.css", "text/css", "body { margin: 0 }"),
        ("/app.js", "text/javascript", "console.log('hi');"),
    ];
    for (path, content_type, body) in cases {
        let response = gateway.get(path).await?;
        assert_eq!(response.status, 200, "{path}: {response}");
        let got_type = response.header("content-type").unwrap_or_default();
        // Older tables say application/javascript; both are correct.
        let type_ok = got_type.starts_with(content_type)
            || (content_type == "text/javascript"
                && got_type.starts_with("application/javascript"));
        assert!(type_ok, "{path}: Content-Type {got_type:?}");
        assert_eq!(response.body_text(), body, "{path}");
    }
    assert_eq!(gateway.get("/missing.html").await?.status, 404);
    Ok(())
}

#[tokio::test]
async fn static_file_traversal_never_serves_files_outside_htdocs() -> anyhow::Result<()> {
    let outer = tempfile::tempdir()?;
    let htdocs = outer.path().join("www");
    write_htdocs(&htdocs)?;
    std::fs::write(outer.path().join("secret.txt"), "top secret")?;
    let docroot = outer.path().join("sockets");
    std::fs::create_dir_all(&docroot)?;
    let htdocs_arg = htdocs.display().to_string();
    let gateway = Gateway::start(&docroot, &["--htdocs", &htdocs_arg]).await?;
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/a/../../secret.txt",
        "/..%2fsecret.txt",
    ] {
        let response = gateway.get(path).await?;
        // tower-http ServeDir answers a path that leaves htdocs as not found.
        assert_eq!(response.status, 404, "{path}: {response}");
        assert!(
            !response.body_text().contains("top secret"),
            "{path} leaked a file outside htdocs"
        );
    }
    Ok(())
}
