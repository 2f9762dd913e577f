//! A real browser for the page tests: Debian's chromium, headless, driven
//! over WebDriver (chromedriver + fantoccini).
//!
//! [`Browser::start`] runs one chromedriver on a free loopback port and waits
//! until its `/status` says ready; each [`Page`] is a separate browser session
//! (its own chromium, its own profile in a temporary directory removed with
//! the page). [`Browser::missing`] says why the browser tests cannot run here;
//! the test binary then reports them ignored with that reason, unless
//! `WSGATE_REQUIRE_BROWSER=1` (set by `.ci/run`) makes that a failure.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

use crate::child::ChildGuard;
use crate::{EVENT_DEADLINE, STARTUP_DEADLINE, http, wait};

/// The environment variable that turns a missing browser into a failure.
pub const REQUIRE_BROWSER_VAR: &str = "WSGATE_REQUIRE_BROWSER";

/// Chromium's flags: headless, and nothing that reaches beyond loopback. The
/// certificates of the https tests come from a CA made for the test, which
/// chromium cannot know: it accepts any certificate (loopback only).
const CHROMIUM_ARGS: [&str; 8] = [
    "--ignore-certificate-errors",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1000,800",
];

/// A running chromedriver; dropping it kills it and every browser it started.
#[derive(Debug)]
pub struct Browser {
    driver: ChildGuard,
    addr: SocketAddr,
    chromium: PathBuf,
}

impl Browser {
    /// Why the browser tests cannot run on this machine, or `None` when
    /// chromium and chromedriver are both installed.
    pub fn missing() -> Option<String> {
        let (chromium, chromedriver) = programs();
        match (chromium, chromedriver) {
            (Some(_), Some(_)) => None,
            _ => Some(
                "chromium and chromedriver are needed for the browser tests \
                 (apt-get install chromium chromium-driver)"
                    .to_owned(),
            ),
        }
    }

    /// True when `WSGATE_REQUIRE_BROWSER=1`: a missing browser is a failure.
    pub fn required() -> bool {
        std::env::var(REQUIRE_BROWSER_VAR).is_ok_and(|value| value == "1")
    }

    /// Starts chromedriver; an error when the browser is not installed.
    pub async fn start() -> anyhow::Result<Browser> {
        let (Some(chromium), Some(chromedriver)) = programs() else {
            bail!(
                "{}",
                Browser::missing().unwrap_or_else(|| "no browser".to_owned())
            );
        };
        // chromedriver has no "any free port": take one, release it, and retry
        // on the rare collision.
        let mut last_error = None;
        for _ in 0..5 {
            // chromedriver listens on 127.0.0.1 and ::1 alike: take a port
            // that is free in both families (a dual-stack bind), when there is IPv6.
            let port = TcpListener::bind("[::]:0")
                .or_else(|_| TcpListener::bind("127.0.0.1:0"))?
                .local_addr()?
                .port();
            let mut command = Command::new(&chromedriver);
            command
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                // Its own process group, so that dropping the Browser also ends
                // every chromium it started, even when a test fails midway.
                .process_group(0);
            let mut driver = ChildGuard::spawn("chromedriver", command)?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_ready(addr, &mut driver).await {
                Ok(()) => {
                    return Ok(Browser {
                        driver,
                        addr,
                        chromium,
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("chromedriver did not start")))
    }

    /// Opens a new, independent browser session.
    pub async fn page(&self) -> anyhow::Result<Page> {
        let profile = tempfile::Builder::new()
            .prefix("wsgate-chromium-")
            .tempdir()
            .context("creating a chromium profile directory")?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|arg| (*arg).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": self.chromium, "args": args }),
        );
        let webdriver = wait::within(
            "a chromium session",
            STARTUP_DEADLINE,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://{}", self.addr)),
        )
        .await?
        .with_context(|| {
            format!(
                "starting chromium; chromedriver says:\n{}",
                self.driver.stderr_text()
            )
        })?;
        Ok(Page {
            webdriver,
            _profile: profile,
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the browsers in its group; the guard then reaps chromedriver.
        if let Ok(pid) = i32::try_from(self.driver.pid()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Chromium and chromedriver, where installed.
fn programs() -> (Option<PathBuf>, Option<PathBuf>) {
    (
        find_program(&["chromium", "chromium-browser", "google-chrome"]),
        find_program(&["chromedriver"]),
    )
}

/// The first of `names` found on `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Polls chromedriver's `/status` until it reports ready.
async fn wait_ready(addr: SocketAddr, driver: &mut ChildGuard) -> anyhow::Result<()> {
    let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    wait::until("chromedriver's /status", STARTUP_DEADLINE, || {
        let request = request.clone();
        let running = driver.check_running();
        async move {
            running?;
            match http::request(addr, request.as_bytes()).await {
                Ok(response)
                    if response.status == 200
                        && response.body_text().contains("\"ready\":true") =>
                {
                    Ok(Some(()))
                }
                _ => Ok(None),
            }
        }
    })
    .await
}

/// One browser session showing one page at a time.
#[derive(Debug)]
pub struct Page {
    webdriver: WebDriver,
    /// The session's chromium profile, removed when the page is dropped.
    _profile: tempfile::TempDir,
}

impl Page {
    /// Navigates to `url` and waits for the page to load.
    pub async fn open(&self, url: &str) -> anyhow::Result<()> {
        self.webdriver
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    /// Replaces the value of the input `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        element
            .clear()
            .await
            .with_context(|| format!("clearing {css}"))?;
        element
            .send_keys(text)
            .await
            .with_context(|| format!("typing into {css}"))
    }

    /// Clicks the element `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css)
            .await?
            .click()
            .await
            .with_context(|| format!("clicking {css}"))
    }

    /// The visible text of the element `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        self.find(css)
            .await?
            .text()
            .await
            .with_context(|| format!("reading {css}"))
    }

    /// Waits until the text of `css` contains `needle`, and returns it. An
    /// element that does not exist yet is waited for under the same deadline.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> anyhow::Result<String> {
        let last = std::sync::Mutex::new(None::<String>);
        let result = wait::until(&format!("{needle:?} in {css}"), EVENT_DEADLINE, || async {
            let text = match self.webdriver.find(Locator::Css(css)).await {
                Ok(element) => Some(
                    element
                        .text()
                        .await
                        .with_context(|| format!("reading {css}"))?,
                ),
                // Not on the page (yet).
                Err(_) => None,
            };
            let found = text.as_ref().filter(|text| text.contains(needle)).cloned();
            *last.lock().expect("never poisoned: no panics while held") = text;
            Ok(found)
        })
        .await;
        let last = last.into_inner().unwrap_or_default();
        result.with_context(|| match last {
            Some(text) => format!("{css} shows {text:?}"),
            None => format!("there is no {css} on the page"),
        })
    }

    async fn find(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        wait::within(
            &format!("element {css}"),
            EVENT_DEADLINE,
            self.webdriver.wait().for_element(Locator::Css(css)),
        )
        .await?
        .with_context(|| format!("finding {css}"))
    }

    /// Ends the session and closes its browser.
    pub async fn close(self) -> anyhow::Result<()> {
        self.webdriver.close().await.context("closing the browser")
    }
}
