//! Scraping a `--metrics-listen` endpoint (the gateway's or a backend's) and
//! reading the samples of its Prometheus text: [`scrape`] and [`Scrape`].
//!
//! A process started with a metrics address prints `metrics on
//! http://<addr>/metrics` on stdout ([`parse_announcement`]); it is ready
//! once the endpoint answers, which [`wait_until_served`] waits for.

use std::net::SocketAddr;

use anyhow::{Context, bail};

use crate::{STARTUP_DEADLINE, http, wait};

/// The prefix of the line that announces a metrics listener.
pub const ANNOUNCEMENT_PREFIX: &str = "metrics on http://";

/// The address in a `metrics on http://<addr>/metrics` line, if it is one.
pub fn parse_announcement(line: &str) -> Option<anyhow::Result<SocketAddr>> {
    let rest = line.strip_prefix(ANNOUNCEMENT_PREFIX)?;
    let addr = rest.trim().trim_end_matches("/metrics");
    Some(
        addr.parse()
            .with_context(|| format!("parsing the metrics address in {line:?}")),
    )
}

/// One sample: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The name, with its suffix (`_total`, `_bucket`, `_count`...).
    pub name: String,
    /// The labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// The samples of one scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The response's `Content-Type`.
    pub content_type: String,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// The text as served.
    pub text: String,
}

impl Scrape {
    /// Parses the Prometheus text format (comments skipped).
    pub fn parse(text: &str, content_type: &str) -> anyhow::Result<Scrape> {
        let samples = text
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(parse_sample)
            .collect::<anyhow::Result<_>>()?;
        Ok(Scrape {
            content_type: content_type.to_owned(),
            samples,
            text: text.to_owned(),
        })
    }

    /// The sum of the samples named `name` whose labels include every pair
    /// of `labels` (0 when there is none, as Prometheus reads a missing series).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }

    /// The value of the one sample named `name` with (at least) `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let mut matching = self.matching(name, labels);
        match (matching.next(), matching.next()) {
            (Some(sample), None) => Ok(sample.value),
            (None, _) => bail!("no sample {name} {labels:?} in:\n{}", self.text),
            (Some(_), Some(_)) => bail!("several samples {name} {labels:?} in:\n{}", self.text),
        }
    }

    /// Every label value of `label` among the samples named `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter_map(|sample| {
                sample
                    .labels
                    .iter()
                    .find(|(key, _)| key == label)
                    .map(|(_, value)| value.clone())
            })
            .collect()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels.iter().all(|(key, value)| {
                    sample
                        .labels
                        .iter()
                        .any(|(have_key, have_value)| have_key == key && have_value == value)
                })
        })
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let bad = || format!("malformed sample line {line:?}");
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').with_context(bad)?;
            let labels = parse_labels(&line[open + 1..close]).with_context(bad)?;
            (&line[..open], labels, &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ').with_context(bad)?;
            (name, Vec::new(), rest)
        }
    };
    let value_text = rest.split_whitespace().next().with_context(bad)?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().with_context(bad)?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `key="value",...` with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(labels);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            bail!("label {key:?} has no quoted value");
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(escaped) => value.push(escaped),
                    None => bail!("unfinished escape"),
                },
                Some(c) => value.push(c),
                None => bail!("unterminated value of {key:?}"),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
}

/// `GET /metrics` on `addr`; an error unless it answers `200`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let response = http::request(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    if response.status != 200 {
        bail!("GET /metrics on {addr} answered {response}");
    }
    Scrape::parse(
        &response.body_text(),
        response.header("content-type").unwrap_or_default(),
    )
}

/// Waits until `addr` answers a scrape (the readiness of a metrics listener).
pub async fn wait_until_served(label: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let what = format!("the metrics of {label} on {addr}");
    wait::until(&what, STARTUP_DEADLINE, || async move {
        Ok(scrape(addr).await.ok().map(|_| ()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels_parse() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{name=\"chat\",code=\"1000\"} 3\n\
                    b 4.5\nh_bucket{le=\"+Inf\"} 2\nq{v=\"x\\\"y\"} 1\n";
        let scrape = Scrape::parse(text, "text/plain").expect("parses");
        assert_eq!(
            scrape.value("a_total", &[("name", "chat")]).expect("one"),
            3.0
        );
        assert_eq!(scrape.value("b", &[]).expect("one"), 4.5);
        assert_eq!(scrape.sum("h_bucket", &[("le", "+Inf")]), 2.0);
        assert_eq!(scrape.sum("missing", &[]), 0.0);
        assert_eq!(scrape.label_values("q", "v"), ["x\"y"]);
        assert_eq!(
            parse_announcement("metrics on http://127.0.0.1:9/metrics")
                .expect("an announcement")
                .expect("an address"),
            "127.0.0.1:9".parse::<SocketAddr>().expect("addr")
        );
        assert!(parse_announcement("listening on http://127.0.0.1:9").is_none());
    }
}
