//! The ways the gateway serves a framed backend, so one suite runs in each:
//! [`Mode::Relay`] (messages cross the link as records), [`Mode::Direct`]
//! (the client's socket is handed to the backend) and [`Mode::Tls`]
//! (relayed, with the client on `wss://`).
//!
//! A suite writes each test once as `async fn name(mode: Mode) -> anyhow::Result<()>`
//! and lists the names in [`all_modes!`](crate::all_modes), which makes a
//! `relay::name`, a `direct::name` and a `tls::name` test of each;
//! [`both_modes!`](crate::both_modes) and [`tls_mode!`](crate::tls_mode) make
//! the first two and the third alone, for tests that need a bare TCP client.

/// How the gateway serves the backends of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The gateway relays every message (framed link protocol).
    Relay,
    /// The gateway hands the client's socket over after the `101`.
    Direct,
    /// The gateway relays every message of a client on TLS: `Gateway::start`
    /// makes its certificate and `Gateway::connect` speaks `wss://`.
    Tls,
}

impl Mode {
    /// The `wsgate` flags that select this mode for every name.
    pub fn gateway_args(self) -> &'static [&'static str] {
        match self {
            Mode::Relay => &[],
            Mode::Direct => &["--direct", "*"],
            Mode::Tls => &["--tls-listen", "127.0.0.1:0"],
        }
    }

    /// `gateway_args` followed by `extra`.
    pub fn with_args<'a>(self, extra: &[&'a str]) -> Vec<&'a str> {
        self.gateway_args()
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    }
}

/// Declares a `relay` and a `direct` test for each named
/// `async fn name(mode: Mode) -> anyhow::Result<()>` of the calling file.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),+ $(,)?) => {
        mod relay {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Mode::Relay).await
                }
            )+
        }
        mod direct {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Mode::Direct).await
                }
            )+
        }
    };
}

/// Declares a `tls` test for each named
/// `async fn name(mode: Mode) -> anyhow::Result<()>` of the calling file.
#[macro_export]
macro_rules! tls_mode {
    ($($name:ident),+ $(,)?) => {
        mod tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Mode::Tls).await
                }
            )+
        }
    };
}

/// Declares a `relay`, a `direct` and a `tls` test for each named
/// `async fn name(mode: Mode) -> anyhow::Result<()>` of the calling file.
#[macro_export]
macro_rules! all_modes {
    ($($name:ident),+ $(,)?) => {
        $crate::both_modes!($($name),+);
        $crate::tls_mode!($($name),+);
    };
}
