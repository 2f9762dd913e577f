//! Which source woke a relay's task: each socket is read with a waker of
//! its own ([`Source`]) that marks it woken before it wakes the task, so a
//! pass woken by one socket (or by the carrier) does not ask the other
//! whether it has anything. Asking costs a readiness poll under tokio's
//! lock; a round trip took four, of which two found nothing. The relay's
//! alarms (idle timer, ping ticker, shutdown) are a source of the same kind:
//! polled with its waker, they are asked again only once one of them woke
//! it, not on every pass (they cost ~300 instructions a round trip).
//!
//! Sound because a socket's readiness, once a read found it pending, comes
//! back only with a wake-up of the waker that read registered: a socket
//! found pending with its source's waker is not asked again until that
//! waker marks it (and a timer or a cancellation wakes the waker it was
//! polled with). Only for a stream that registers its read interest in
//! its reads alone: a TLS stream may read inside a write (with the task's
//! own waker), so a TLS client is always asked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Wake, Waker};

/// One socket's waker: marks the socket woken, then wakes the task.
#[derive(Debug)]
struct Mark {
    woken: AtomicBool,
    /// The relay's task.
    task: Mutex<Option<Waker>>,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

/// One source of a relay's wake-ups (a socket, or the alarms): its waker,
/// and whether its last read (or poll) found it pending with that waker
/// registered.
#[derive(Debug)]
pub(crate) struct Source {
    mark: Arc<Mark>,
    waker: Waker,
    /// The last read found nothing, with [`Self::waker`] registered.
    waiting: bool,
    /// Exact wake-ups: only this source's reads register its read interest.
    exact: bool,
    /// The last [`Self::may_read`] found the socket's mark.
    marked: bool,
}

impl Source {
    /// A source whose wake-ups are exact when `exact`; otherwise it is
    /// asked on every pass.
    pub(crate) fn new(exact: bool) -> Source {
        let mark = Arc::new(Mark {
            woken: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        Source {
            waker: Waker::from(Arc::clone(&mark)),
            mark,
            waiting: false,
            exact,
            marked: false,
        }
    }

    /// Whether the socket may have something: not found pending since its
    /// last wake-up. Clears the mark, so a wake-up after this counts.
    #[inline]
    pub(crate) fn may_read(&mut self) -> bool {
        self.marked = false;
        if !self.waiting {
            return true;
        }
        if self.mark.woken.swap(false, Ordering::Acquire) {
            self.waiting = false;
            self.marked = true;
            return true;
        }
        false
    }

    /// Whether the last [`Self::may_read`] said yes because the socket's
    /// own waker woke the task: its readiness came, so a read need not ask
    /// for it first.
    #[inline]
    pub(crate) fn marked(&self) -> bool {
        self.marked
    }

    /// The context to read the socket with.
    #[inline]
    pub(crate) fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }

    /// The read found nothing, with this source's waker registered.
    #[inline]
    pub(crate) fn found_nothing(&mut self) {
        self.waiting = self.exact;
    }
}

/// The task a relay's sources wake, kept up to date with the task's waker.
#[derive(Debug, Default)]
pub(crate) struct Task {
    known: Option<Waker>,
}

impl Task {
    /// Makes `sources` wake the task polled with `cx`; a lock per source
    /// only when the waker changed (the first poll).
    #[inline]
    pub(crate) fn register<const N: usize>(&mut self, cx: &Context<'_>, sources: [&Source; N]) {
        if self
            .known
            .as_ref()
            .is_some_and(|known| known.will_wake(cx.waker()))
        {
            return;
        }
        for source in sources {
            *source
                .mark
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        }
        self.known = Some(cx.waker().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_source_found_pending_is_asked_again_only_once_woken() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task_waker = Waker::from(Arc::clone(&count));
        let cx = Context::from_waker(&task_waker);
        let mut task = Task::default();
        let mut client = Source::new(true);
        let mut link = Source::new(true);
        task.register(&cx, [&client, &link]);

        assert!(client.may_read(), "never read: asked");
        client.found_nothing();
        assert!(!client.may_read(), "pending and not woken: not asked");
        assert!(link.may_read(), "the other source is its own");

        client.context().waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert!(client.may_read(), "woken: asked");
        assert!(client.marked(), "by its own waker");
        assert!(client.may_read(), "asked until found pending again");
        assert!(!client.marked(), "the mark was taken");
        client.found_nothing();
        assert!(!client.may_read());

        // A wake-up between the check and the next read is not lost.
        client.context().waker().wake_by_ref();
        assert!(client.may_read());
        client.found_nothing();
        client.context().waker().wake_by_ref();
        assert!(client.may_read());
    }

    #[test]
    fn the_alarms_are_asked_again_once_one_of_them_fired() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task_waker = Waker::from(Arc::clone(&count));
        let mut task = Task::default();
        let mut alarms = Source::new(true);
        task.register(&Context::from_waker(&task_waker), [&alarms]);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut cancelled = std::pin::pin!(shutdown.cancelled());

        assert!(alarms.may_read(), "never polled: asked");
        assert!(cancelled.as_mut().poll(&mut alarms.context()).is_pending());
        alarms.found_nothing();
        assert!(!alarms.may_read(), "nothing fired: not asked");

        shutdown.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert!(alarms.may_read(), "fired: asked");
        assert!(cancelled.as_mut().poll(&mut alarms.context()).is_ready());
    }

    #[test]
    fn a_source_without_exact_wakeups_is_always_asked() {
        let mut tls = Source::new(false);
        tls.found_nothing();
        assert!(tls.may_read());
    }

    #[test]
    fn a_new_task_waker_is_the_one_woken() {
        let first = Arc::new(Count(AtomicUsize::new(0)));
        let second = Arc::new(Count(AtomicUsize::new(0)));
        let (first_waker, second_waker) = (
            Waker::from(Arc::clone(&first)),
            Waker::from(Arc::clone(&second)),
        );
        let mut task = Task::default();
        let source = Source::new(true);
        let other = Source::new(true);
        task.register(&Context::from_waker(&first_waker), [&source, &other]);
        task.register(&Context::from_waker(&second_waker), [&source, &other]);
        source.context().waker().wake_by_ref();
        other.context().waker().wake_by_ref();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 2);
    }
}
