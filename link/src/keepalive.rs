//! The keepalive ping ticker and the idle timer of a client, with their
//! defaults: the gateway's relay and a backend's direct session use the same
//! two, so a client is kept alive and timed out the same way in both modes.
//!
//! Both offer a `poll_*` form (for hand-written `Stream`s) and an `async`
//! form (for `select!` loops). What happens when they fire (a ping, a `1001`)
//! is the caller's.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};

/// Default time between pings to a client.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Default silence after which a client is closed with `1001`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// When the client was last heard from, and the timer that checks it.
///
/// One timer per client, re-armed only when it fires, so a busy client costs
/// a clock read per message rather than a timer per message.
#[derive(Debug)]
pub struct IdleTimer {
    idle_timeout: Option<Duration>,
    last_heard: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    /// A timer that expires after `idle_timeout` of silence; `None` never expires.
    pub fn new(idle_timeout: Option<Duration>) -> IdleTimer {
        let now = Instant::now();
        IdleTimer {
            idle_timeout,
            last_heard: now,
            sleep: idle_timeout.map(|timeout| Box::pin(tokio::time::sleep_until(now + timeout))),
        }
    }

    /// The client was heard from now.
    pub fn heard(&mut self) {
        if self.idle_timeout.is_some() {
            self.last_heard = Instant::now();
        }
    }

    /// Ready once the client has been silent for the idle timeout; never without one.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(timeout), Some(sleep)) = (self.idle_timeout, self.sleep.as_mut()) else {
            return Poll::Pending;
        };
        while sleep.as_mut().poll(cx).is_ready() {
            let deadline = self.last_heard + timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// Resolves once the client has been silent for the idle timeout; never without one.
    pub async fn expired(&mut self) {
        poll_fn(|cx| self.poll_expired(cx)).await;
    }
}

/// The keepalive ping ticker; never ticks without a ping interval.
#[derive(Debug)]
pub struct PingTicker(Option<Interval>);

impl PingTicker {
    /// A ticker that first ticks one `ping_interval` from now; `None` never ticks.
    pub fn new(ping_interval: Option<Duration>) -> PingTicker {
        PingTicker(ping_interval.map(|period| {
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        }))
    }

    /// Ready when a ping is due.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(interval) => interval.poll_tick(cx).map(|_| ()),
            None => Poll::Pending,
        }
    }

    /// Resolves when a ping is due.
    pub async fn tick(&mut self) {
        poll_fn(|cx| self.poll_tick(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_timer_expires_only_after_a_full_silence() {
        let mut idle = IdleTimer::new(Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(6)).await;
        idle.heard();
        let started = Instant::now();
        idle.expired().await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn ping_ticker_ticks_every_interval() {
        let mut pings = PingTicker::new(Some(Duration::from_secs(30)));
        let started = Instant::now();
        pings.tick().await;
        pings.tick().await;
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_period_nothing_fires() {
        let mut idle = IdleTimer::new(None);
        let mut pings = PingTicker::new(None);
        let fired = tokio::time::timeout(Duration::from_secs(3600), async {
            tokio::select! {
                () = idle.expired() => {},
                () = pings.tick() => {},
            }
        })
        .await;
        assert!(fired.is_err());
    }
}
