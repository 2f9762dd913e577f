//! `websocket_chat`: every message goes to every other client, text as text
//! and binary as binary; with `-w`, ouistiti's `WSHello`, `WSPrivate` and
//! `WSWhois` commands and presence lines (`docs/chat.md`).

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;

use backend::{CommonArgs, ServeOptions};
use clap::Parser;
use servers::chat::{self, DEFAULT_QUEUE_CAPACITY, Room, RoomOptions};

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
    /// Messages that may wait for one client; a client that falls further behind is closed with 1008.
    #[arg(long = "queue", value_name = "N", default_value_t = NonZeroUsize::new(DEFAULT_QUEUE_CAPACITY).expect("the default capacity is not zero"))]
    queue_capacity: NonZeroUsize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    backend::init_tracing();
    let options = RoomOptions {
        commands: args.commands,
        queue_capacity: args.queue_capacity,
    };
    let setup = || {
        let room = Arc::new(Room::new(options));
        Ok(move |session, shutdown| chat::run_session(session, shutdown, Arc::clone(&room)))
    };
    match backend::launch(
        &args.common,
        "websocket_chat",
        ServeOptions::default(),
        setup,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("websocket_chat: {error}");
            ExitCode::FAILURE
        }
    }
}
