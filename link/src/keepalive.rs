//! The keepalive ping ticker and the idle timer of a client, with their
//! defaults: the gateway's relay and a backend's direct session use the same
//! two, so a client is kept alive and timed out the same way in both modes.
//!
//! Both offer a `poll_*` form (for hand-written `Stream`s) and an `async`
//! form (for `select!` loops). What happens when they fire (a ping, a `1001`)
//! is the caller's.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Default time between pings to a client.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Default silence after which a client is closed with `1001`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// When the client was last heard from, and the timer that checks it.
///
/// One timer per client, re-armed only when it fires, so a busy client costs
/// a clock read per read of its socket (the relay and a direct session call
/// [`IdleTimer::heard`] for each read that brought bytes) rather than a timer
/// per message.
#[derive(Debug)]
pub struct IdleTimer {
    idle_timeout: Option<Duration>,
    last_heard: Instant,
    sleep: Option<LazySleep>,
}

impl IdleTimer {
    /// A timer that expires after `idle_timeout` of silence; `None` never expires.
    pub fn new(idle_timeout: Option<Duration>) -> IdleTimer {
        let now = Instant::now();
        IdleTimer {
            idle_timeout,
            last_heard: now,
            sleep: idle_timeout.map(|timeout| LazySleep::until(now + timeout)),
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
        while sleep.poll(cx).is_ready() {
            let deadline = self.last_heard + timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            sleep.reset(deadline);
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
pub struct PingTicker(Option<(Duration, LazySleep)>);

impl PingTicker {
    /// A ticker that first ticks one `ping_interval` from now; `None` never ticks.
    pub fn new(ping_interval: Option<Duration>) -> PingTicker {
        PingTicker(ping_interval.map(|period| (period, LazySleep::until(Instant::now() + period))))
    }

    /// Ready when a ping is due; the next is one interval after this call
    /// (a late tick delays the ones after it, none is made up for).
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((period, sleep)) = &mut self.0 else {
            return Poll::Pending;
        };
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        sleep.reset(Instant::now() + *period);
        Poll::Ready(())
    }

    /// Resolves when a ping is due.
    pub async fn tick(&mut self) {
        poll_fn(|cx| self.poll_tick(cx)).await;
    }
}

/// A timer polled again only when it may have fired or the waker changed.
///
/// A client's relay polls its timers on every pass, that is on every
/// wake-up, though they fire once in tens of seconds; polling a tokio
/// `Sleep` costs its registration work each time (about a tenth of the
/// relay's instructions per round trip). Once the timer holds this task's
/// waker, a pass only asks whether it has fired (`Sleep::is_elapsed`, no
/// clock read); the waker it holds is the one a firing wakes.
#[derive(Debug)]
struct LazySleep {
    sleep: Pin<Box<Sleep>>,
    /// The waker the timer was last polled with, if it is still armed with it.
    registered: Option<Waker>,
}

impl LazySleep {
    fn until(deadline: Instant) -> LazySleep {
        LazySleep {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            registered: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(waker) = &self.registered
            && waker.will_wake(cx.waker())
            && !self.sleep.is_elapsed()
        {
            return Poll::Pending;
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.registered = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// A new deadline; the next poll registers the waker again.
    fn reset(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.registered = None;
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
    async fn a_timer_moved_to_another_task_wakes_that_task() {
        let mut idle = IdleTimer::new(Some(Duration::from_secs(10)));
        let mut pings = PingTicker::new(Some(Duration::from_secs(30)));
        // Armed with this task's waker, which will never be polled again for them.
        let noop = std::task::Waker::noop();
        let mut cx = Context::from_waker(noop);
        assert!(idle.poll_expired(&mut cx).is_pending());
        assert!(pings.poll_tick(&mut cx).is_pending());
        let started = Instant::now();
        let fired = tokio::spawn(async move {
            idle.expired().await;
            let idle_at = started.elapsed();
            pings.tick().await;
            (idle_at, started.elapsed())
        });
        // A timer that woke only the first waker would leave the task asleep.
        let fired = tokio::time::timeout(Duration::from_secs(3600), fired)
            .await
            .expect("the moved timers woke their new task")
            .expect("the task ends");
        assert_eq!(fired, (Duration::from_secs(10), Duration::from_secs(30)));
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
