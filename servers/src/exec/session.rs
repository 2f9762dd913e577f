//! One client and its program: client messages to the program's stdin,
//! the program's stdout to the client, and how the pair ends.
//!
//! Text mode (the default): each text message is written to stdin as one
//! line; a message holding a newline is refused with 1008 and a binary
//! message with 1003. Each line of stdout (without its `\n` or `\r\n`) is one
//! text message. `--binary`: every message's bytes go to stdin as they are,
//! and whatever stdout yields is sent as binary messages, with no splitting.
//!
//! Ends: the program exits 0 → 1000; it exits non-zero, is killed or writes
//! what cannot be sent (a line over `--max-line`, invalid UTF-8) → 1011 with
//! the reason, also logged; the client leaves → stdin closed, then SIGTERM
//! and SIGKILL a `--grace` apart ([`Program::terminate`]); the backend stops
//! → 1001 and SIGTERM at once. The program is reaped before [`run_session`]
//! returns.
//!
//! Nothing is buffered without bound: stdout is read only as fast as the
//! client takes messages (a fast program blocks on its full pipe), and a
//! client message is read only once the previous one is in the stdin pipe.

use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use backend::{CloseCode, Message, Session, SessionError};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, ChildStdout};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use super::ExecOptions;
use super::environment::program_environment;
use super::program::{self, Program, describe_exit};

/// The most bytes read from stdout at once in binary mode (one message each).
const BINARY_CHUNK: usize = 16 * 1024;

/// Why the client's side ended.
#[derive(Debug)]
enum ClientEnd {
    /// The client closed, vanished or its link failed.
    Left,
    /// The client sent what this service does not take; close with this code and reason.
    Refused(CloseCode, &'static str),
    /// The program took none of a message into its stdin pipe for this long.
    Stalled(Duration),
}

/// Why the program's output ended.
#[derive(Debug)]
enum OutputEnd {
    /// stdout reached end of file; everything before it was sent.
    Eof,
    /// The client could not be written to.
    ClientGone,
    /// The program wrote what cannot be sent; the reason.
    Fault(String),
}

/// How the session ended, which decides the close code and the program's fate.
#[derive(Debug)]
enum Outcome {
    /// The program exited (and its output was sent).
    Exited(io::Result<ExitStatus>),
    /// The client left first.
    ClientLeft,
    /// The client sent something refused.
    Refused(CloseCode, &'static str),
    /// The program wrote something that cannot be sent.
    Fault(String),
    /// The program stopped taking its input; the reason.
    Stalled(String),
    /// The backend is shutting down.
    Shutdown,
}

/// Runs the program of `options` for `session` until one of them ends, as the
/// module documentation describes; returns after the program is reaped.
pub async fn run_session(
    mut session: Session,
    shutdown: CancellationToken,
    options: Arc<ExecOptions>,
) {
    let client_id = session.meta().id;
    let environment = program_environment(session.meta(), &options.program.passed_env);
    let (mut program, pipes) = match Program::spawn(&options.program, environment) {
        Ok(started) => started,
        Err(error) => {
            error!(%error, program = %options.program.path.display(), "cannot start the program");
            close_client(
                &mut session,
                CloseCode::Error,
                "cannot start the program",
                options.grace,
            )
            .await;
            return;
        }
    };
    debug!(program = %options.program.path.display(), "program started");
    let stderr_logger = tokio::spawn(
        program::log_stderr(pipes.stderr, client_id).instrument(tracing::Span::current()),
    );
    let (mut sink, mut stream) = session.split();
    let outcome = {
        let to_program = client_to_program(
            &mut stream,
            pipes.stdin,
            options.binary,
            options.stdin_timeout,
        );
        let to_client =
            program_to_client(pipes.stdout, &mut sink, options.binary, options.max_line);
        tokio::pin!(to_program, to_client);
        let drain_deadline = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(drain_deadline);
        let mut exit_status: Option<io::Result<ExitStatus>> = None;
        let mut output_done = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Outcome::Shutdown,
                end = &mut to_client, if !output_done => {
                    output_done = true;
                    match end {
                        OutputEnd::Eof => {
                            if let Some(status) = exit_status.take() {
                                break Outcome::Exited(status);
                            }
                        }
                        OutputEnd::ClientGone => break Outcome::ClientLeft,
                        OutputEnd::Fault(reason) => break Outcome::Fault(reason),
                    }
                }
                status = program.wait(), if exit_status.is_none() => {
                    if output_done {
                        break Outcome::Exited(status);
                    }
                    // Send what the program wrote before it exited.
                    exit_status = Some(status);
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + options.grace);
                }
                _ = &mut drain_deadline, if exit_status.is_some() => {
                    warn!("the program exited but its stdout is still open (held by a process it started?); closing");
                    if let Some(status) = exit_status.take() {
                        break Outcome::Exited(status);
                    }
                }
                end = &mut to_program => break match end {
                    ClientEnd::Left => Outcome::ClientLeft,
                    ClientEnd::Refused(code, reason) => Outcome::Refused(code, reason),
                    ClientEnd::Stalled(waited) => Outcome::Stalled(format!(
                        "the program has not read its input for {} s",
                        waited.as_secs_f64()
                    )),
                },
            }
        }
        // Leaving this block drops the pumps and with them stdin (the
        // program reads EOF) and stdout.
    };
    let mut session = match sink.reunite(stream) {
        Ok(session) => session,
        Err(error) => {
            error!(%error, "session halves do not match");
            return;
        }
    };
    let grace = options.grace;
    match outcome {
        Outcome::Exited(Ok(status)) if status.success() => {
            info!("program exited with status 0; closing with 1000");
            close_client(&mut session, CloseCode::Normal, "", grace).await;
        }
        Outcome::Exited(Ok(status)) => {
            let reason = format!("program {}", describe_exit(status));
            warn!("{reason}; closing with 1011");
            close_client(&mut session, CloseCode::Error, &reason, grace).await;
        }
        Outcome::Exited(Err(error)) => {
            error!(%error, "cannot wait for the program");
            close_client(&mut session, CloseCode::Error, "program failed", grace).await;
        }
        Outcome::ClientLeft => {
            drop(session);
            end_program(&mut program, grace, true, "client left").await;
        }
        Outcome::Refused(code, reason) => {
            info!(code = u16::from(code), "{reason}; closing");
            tokio::join!(
                close_client(&mut session, code, reason, grace),
                end_program(&mut program, grace, true, "client refused"),
            );
        }
        Outcome::Fault(reason) => {
            warn!("{reason}; closing with 1011");
            tokio::join!(
                close_client(&mut session, CloseCode::Error, &reason, grace),
                end_program(&mut program, grace, true, "bad output"),
            );
        }
        Outcome::Stalled(reason) => {
            warn!("{reason}; closing with 1011");
            tokio::join!(
                close_client(&mut session, CloseCode::Error, &reason, grace),
                end_program(&mut program, grace, true, "stdin not read"),
            );
        }
        Outcome::Shutdown => {
            tokio::join!(
                close_client(&mut session, CloseCode::Away, "server shutting down", grace),
                end_program(&mut program, grace, false, "server shutting down"),
            );
        }
    }
    // A process the program started may still hold stderr; stop listening then.
    let stderr_abort = stderr_logger.abort_handle();
    if tokio::time::timeout(grace, stderr_logger).await.is_err() {
        debug!("stderr still open after the program ended; no longer logged");
        stderr_abort.abort();
    }
}

/// Ends `program` ([`Program::terminate`]) and logs how it went.
async fn end_program(program: &mut Program, grace: Duration, wait_for_eof: bool, why: &str) {
    match program.terminate(grace, wait_for_eof).await {
        Ok(status) => info!(why, "program {}", describe_exit(status)),
        Err(error) => error!(%error, why, "cannot reap the program"),
    }
}

/// Sends a close to the client, giving up after `deadline` (a client that
/// reads nothing must not hold the session open).
async fn close_client(session: &mut Session, code: CloseCode, reason: &str, deadline: Duration) {
    match tokio::time::timeout(deadline, session.close(code, reason)).await {
        Err(_) => debug!("close not taken in time"),
        Ok(Err(error)) => debug!(%error, "cannot send close"),
        Ok(Ok(())) => {}
    }
}

/// Writes each client message to `stdin` until the client's side ends. If
/// the program closes its stdin, later messages are read and dropped, so
/// that the client's close is still seen. While a message waits for room in
/// the pipe, the client is still watched: its leaving ends the session at
/// once (the next message, if one comes first, is held, and nothing more is
/// read), and a message that waits longer than `stdin_timeout` ends it as
/// [`ClientEnd::Stalled`].
async fn client_to_program<S>(
    stream: &mut S,
    stdin: ChildStdin,
    binary: bool,
    stdin_timeout: Duration,
) -> ClientEnd
where
    S: Stream<Item = Result<Message, SessionError>> + Unpin,
{
    let mut stdin = Some(stdin);
    let mut line = Vec::new();
    let mut held: Option<Message> = None;
    loop {
        let item = match held.take() {
            Some(message) => Ok(message),
            None => match stream.next().await {
                Some(item) => item,
                None => return ClientEnd::Left,
            },
        };
        let bytes: &[u8] = match &item {
            Ok(Message::Text(text)) if binary => text.as_bytes(),
            Ok(Message::Text(text)) => {
                if text.as_bytes().contains(&b'\n') {
                    return ClientEnd::Refused(
                        CloseCode::Policy,
                        "a message may not contain a newline (each message is one line)",
                    );
                }
                line.clear();
                line.extend_from_slice(text.as_bytes());
                line.push(b'\n');
                &line
            }
            Ok(Message::Binary(data)) if binary => data,
            Ok(Message::Binary(_)) => {
                return ClientEnd::Refused(
                    CloseCode::Unsupported,
                    "binary messages are not accepted (the program reads lines of text)",
                );
            }
            Ok(Message::Close(_)) => return ClientEnd::Left,
            Ok(_) => continue,
            Err(error) => {
                debug!(%error, "client link failed");
                return ClientEnd::Left;
            }
        };
        let Some(pipe) = stdin.as_mut() else {
            debug!(
                len = bytes.len(),
                "program closed its stdin; message dropped"
            );
            continue;
        };
        let write = tokio::time::timeout(stdin_timeout, pipe.write_all(bytes));
        tokio::pin!(write);
        let written = loop {
            tokio::select! {
                written = &mut write => break written,
                next = stream.next(), if held.is_none() => match next {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => held = Some(message),
                    Some(Ok(Message::Close(_))) | None => return ClientEnd::Left,
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        debug!(%error, "client link failed");
                        return ClientEnd::Left;
                    }
                },
            }
        };
        match written {
            Err(_) => return ClientEnd::Stalled(stdin_timeout),
            Ok(Err(error)) => {
                info!(%error, "the program closed its stdin; client messages are dropped from now on");
                stdin = None;
            }
            Ok(Ok(())) => {}
        }
        // Messages are bounded by the gateway's limit; keep no large buffer between them.
        if line.capacity() > BINARY_CHUNK {
            line = Vec::new();
        }
    }
}

/// Sends the program's stdout to the client as messages (lines, or binary
/// chunks) until end of file. stdout is read only when the previous message
/// has been taken by the sink; the sink is flushed whenever stdout has
/// nothing more ready.
async fn program_to_client<K>(
    stdout: ChildStdout,
    sink: &mut K,
    binary: bool,
    max_line: usize,
) -> OutputEnd
where
    K: Sink<Message, Error = SessionError> + Unpin,
{
    if binary {
        let chunks = ReaderStream::with_capacity(stdout, BINARY_CHUNK).map(|chunk| {
            chunk
                .map(Message::Binary)
                .map_err(|error| format!("cannot read the program's output: {error}"))
        });
        forward(chunks, sink).await
    } else {
        let lines =
            FramedRead::new(stdout, LinesCodec::new_with_max_length(max_line)).map(move |line| {
                line.map(Message::text).map_err(|error| match error {
                    LinesCodecError::MaxLineLengthExceeded => {
                        format!("the program wrote a line over {max_line} bytes")
                    }
                    LinesCodecError::Io(error) if error.kind() == io::ErrorKind::InvalidData => {
                        "the program wrote a line that is not UTF-8".to_owned()
                    }
                    LinesCodecError::Io(error) => {
                        format!("cannot read the program's output: {error}")
                    }
                })
            });
        forward(lines, sink).await
    }
}

async fn forward<S, K>(mut messages: S, sink: &mut K) -> OutputEnd
where
    S: Stream<Item = Result<Message, String>> + Unpin,
    K: Sink<Message, Error = SessionError> + Unpin,
{
    loop {
        let next = match messages.next().now_or_never() {
            Some(next) => next,
            None => {
                if let Err(error) = sink.flush().await {
                    debug!(%error, "cannot write to the client");
                    return OutputEnd::ClientGone;
                }
                messages.next().await
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            end => {
                if let Err(error) = sink.flush().await {
                    debug!(%error, "cannot write to the client");
                    return OutputEnd::ClientGone;
                }
                return match end {
                    Some(Err(reason)) => OutputEnd::Fault(reason),
                    _ => OutputEnd::Eof,
                };
            }
        };
        if let Err(error) = sink.feed(message).await {
            debug!(%error, "cannot write to the client");
            return OutputEnd::ClientGone;
        }
    }
}
