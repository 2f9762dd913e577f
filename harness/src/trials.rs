//! Test binaries that need something outside the workspace (a browser, a
//! `redis-server`) run on libtest-mimic, so that a machine without it
//! reports their tests ignored, with the reason, rather than ok.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed, Trial};

/// One test's body.
pub type TestFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
/// A test: its name and what starts it.
pub type NamedTest = (&'static str, fn() -> TestFuture);

/// Runs `tests` under `arguments`, each on a runtime of its own; with
/// `missing` (why they cannot run), prints the reason and marks every test
/// ignored.
pub fn run_trials(
    arguments: &Arguments,
    tests: Vec<NamedTest>,
    missing: Option<String>,
) -> ExitCode {
    if let Some(why) = &missing {
        println!("ignored: {why}");
    }
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            Trial::test(name, move || run(test())).with_ignored_flag(missing.is_some())
        })
        .collect();
    libtest_mimic::run(arguments, trials).exit_code()
}

/// Runs one test on its own runtime; an error fails it with its whole chain.
fn run(test: TestFuture) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| Failed::from(format!("cannot start a runtime: {error}")))?;
    runtime
        .block_on(test)
        .map_err(|error| Failed::from(format!("{error:#}")))
}
