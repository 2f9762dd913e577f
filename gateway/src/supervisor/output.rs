//! A backend's stdout and stderr, line by line, into the gateway's log.
//!
//! Each line becomes one event at INFO with target `backend`, inside the
//! backend's span (`backend{name=.. pid=..}`), so `RUST_LOG=info,backend=warn`
//! silences them. A line is cut at [`MAX_LINE`] bytes (the rest, up to the
//! next newline, is dropped and the event says `truncated`), and bytes that
//! are not UTF-8 are replaced, so a backend cannot make the gateway buffer
//! without bound or write garbage into its log.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest line logged, in bytes.
pub(crate) const MAX_LINE: usize = 4096;

/// Logs every line read from `output` until it ends (the backend and every
/// process that inherited the pipe closed it) or fails.
pub(crate) async fn log_lines(output: impl AsyncRead + Unpin, stream: &'static str) {
    let mut reader = BufReader::with_capacity(MAX_LINE, output);
    let mut line = Vec::with_capacity(256);
    loop {
        match next_line(&mut reader, &mut line).await {
            Ok(Some(truncated)) => {
                let text = String::from_utf8_lossy(&line);
                if truncated {
                    tracing::info!(target: "backend", stream, truncated, "{text}");
                } else {
                    tracing::info!(target: "backend", stream, "{text}");
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(stream, %error, "cannot read the backend's output");
                return;
            }
        }
    }
}

/// Reads the next line into `line` (without its `\n` or `\r\n`, cut at
/// [`MAX_LINE`] bytes) and says whether it was cut; `None` at the end.
async fn next_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> io::Result<Option<bool>> {
    line.clear();
    let mut truncated = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            // A last line without a newline still counts.
            return Ok((!line.is_empty() || truncated).then_some(truncated));
        }
        let (taken, end_of_line) = match memchr::memchr(b'\n', chunk) {
            Some(newline) => (newline + 1, true),
            None => (chunk.len(), false),
        };
        let content = &chunk[..taken - usize::from(end_of_line)];
        let room = MAX_LINE - line.len();
        truncated |= content.len() > room;
        line.extend_from_slice(&content[..content.len().min(room)]);
        reader.consume(taken);
        if end_of_line {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(truncated));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8]) -> Vec<(String, bool)> {
        // A small buffer, so lines also cross reads.
        let mut reader = BufReader::with_capacity(7, input);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while let Some(truncated) = next_line(&mut reader, &mut line)
            .await
            .expect("reading a slice")
        {
            lines.push((String::from_utf8_lossy(&line).into_owned(), truncated));
        }
        lines
    }

    #[tokio::test]
    async fn lines_are_split_cut_at_the_limit_and_the_last_one_kept() {
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\r\ntwo\n\n{long}\nafter\nlast");
        let expected = [
            ("one".to_owned(), false),
            ("two".to_owned(), false),
            (String::new(), false),
            ("x".repeat(MAX_LINE), true),
            ("after".to_owned(), false),
            ("last".to_owned(), false),
        ];
        assert_eq!(lines(input.as_bytes()).await, expected);
        assert_eq!(lines(b"").await, []);
        assert_eq!(
            lines(b"bad \xff byte\n").await,
            [("bad \u{fffd} byte".to_owned(), false)]
        );
    }
}
