//! The two ways the gateway serves a framed backend, so one suite runs in
//! both: [`Mode::Relay`] (messages cross the link as records) and
//! [`Mode::Direct`] (the client's socket is handed to the backend).
//!
//! A suite writes each test once as `async fn name(mode: Mode) -> anyhow::Result<()>`
//! and lists the names in [`both_modes!`](crate::both_modes), which makes a
//! `relay::name` and a `direct::name` test of each.

/// How the gateway serves the backends of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The gateway relays every message (framed link protocol).
    Relay,
    /// The gateway hands the client's socket over after the `101`.
    Direct,
}

impl Mode {
    /// The `wsgate` flags that select this mode for every name.
    pub fn gateway_args(self) -> &'static [&'static str] {
        match self {
            Mode::Relay => &[],
            Mode::Direct => &["--direct", "*"],
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
