//! `websocket_chat`: every message goes to every other client, text as text
//! and binary as binary; with `-w`, ouistiti's `WSHello`, `WSPrivate` and
//! `WSWhois` commands and presence lines (`docs/chat.md`).

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The largest message a client may send (the backend library's default),
/// which bounds what another instance may publish.
const MAX_MESSAGE: usize = 16 << 20;

use backend::{CarrierTerms, CommonArgs, LaunchError, ServeOptions};
use clap::Parser;
use servers::backplane::{self, RedisArgs};
use servers::chat::{
    self, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_CAPACITY, DEFAULT_STALL_TIMEOUT, Room, RoomOptions,
};

/// Chat server for wsgate: every message goes to every other connected client.
///
/// With -w, text messages `WSHello <name>`, `WSPrivate <name> <message>` and
/// `WSWhois <name>` are commands, and named clients see who joins and leaves
/// (WSUsers, WSJoin, WSLeave). The protocol is described in docs/chat.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Understand ouistiti's chat commands (WSHello, WSPrivate, WSWhois) and send presence lines.
    #[arg(short = 'w', long = "commands")]
    commands: bool,
    /// Messages that may wait for one client. A sender waits while a client's queue is full; a client
    /// whose queue is full and who reads nothing for --stall-timeout is closed with 1008.
    #[arg(long = "queue", value_name = "N", default_value_t = NonZeroUsize::new(DEFAULT_QUEUE_CAPACITY).expect("the default capacity is not zero"))]
    queue_capacity: NonZeroUsize,
    /// Payload bytes that may wait for one client (default 1 MiB), with the same effect as --queue.
    #[arg(long = "queue-bytes", value_name = "BYTES", default_value_t = NonZeroUsize::new(DEFAULT_QUEUE_BYTES).expect("the default byte limit is not zero"))]
    queue_bytes: NonZeroUsize,
    /// Seconds a client with a full queue may read nothing before it is closed with 1008.
    #[arg(long = "stall-timeout", value_name = "SECONDS", default_value_t = DEFAULT_STALL_TIMEOUT.as_secs())]
    stall_timeout: u64,
    /// Do not fan out: every relayed client gets its messages on its own link
    /// from the gateway. By default a message for many relayed clients of one
    /// gateway crosses to it once, on a carrier link (docs/chat.md).
    #[arg(long = "no-fanout")]
    no_fanout: bool,
    #[command(flatten)]
    redis: RedisArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    backend::init_tracing(args.common.log_format);
    let options = RoomOptions {
        commands: args.commands,
        queue_capacity: args.queue_capacity,
        queue_bytes: args.queue_bytes,
        stall_timeout: Duration::from_secs(args.stall_timeout),
    };
    let redis = args
        .redis
        .options(&args.common.name_or("websocket_chat"), "chat", MAX_MESSAGE);
    let setup = || {
        let room = Arc::new(Room::new(options));
        if let Some(redis) = redis {
            backplane::start(redis, |backplane| {
                room.attach_backplane(backplane);
                Arc::clone(&room)
            })
            .map_err(|error| LaunchError::Setup(Box::new(error)))?;
        }
        Ok(move |session, shutdown| chat::run_session(session, shutdown, Arc::clone(&room)))
    };
    // The gateway queues as much for a carried client as the room would,
    // and closes one that reads nothing for as long with 1008.
    let fanout = (!args.no_fanout).then(|| CarrierTerms {
        queue_bytes: args.queue_bytes.get(),
        stall_ms: args.stall_timeout.saturating_mul(1000),
    });
    let serve_options = ServeOptions {
        fanout,
        ..ServeOptions::default()
    };
    // Served from the start, at 0; `chat::run_session` counts into it.
    serve_options.metrics.slow_client_evictions();
    match backend::launch(&args.common, "websocket_chat", serve_options, setup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("websocket_chat: {error}");
            ExitCode::FAILURE
        }
    }
}
