//! Crossing threads: [`ReactorHandle::call_from_thread`], the only reactor operation that
//! may be called from another thread, and the worker pool behind
//! [`Reactor::defer_to_thread`](super::Reactor::defer_to_thread) for blocking work such
//! as name lookups.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use super::Reactor;
use super::time::CallResult;

/// A call handed to the reactor thread from anywhere.
pub(crate) type ThreadCall = Box<dyn FnOnce(&Reactor) + Send>;

/// The queue shared between the reactor and every [`ReactorHandle`].
pub(crate) struct ThreadQueue {
    calls: Mutex<VecDeque<ThreadCall>>,
    waker: mio::Waker,
}

impl ThreadQueue {
    pub(crate) fn new(waker: mio::Waker) -> ThreadQueue {
        ThreadQueue {
            calls: Mutex::new(VecDeque::new()),
            waker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<ThreadCall>> {
        // A panic while holding the lock cannot leave the queue half-changed (push and
        // take are single operations), so a poisoned lock is safe to use.
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, call: ThreadCall) {
        let was_empty = {
            let mut calls = self.lock();
            let was_empty = calls.is_empty();
            calls.push_back(call);
            was_empty
        };
        // One wake-up per batch: the reactor empties the whole queue when it wakes, and
        // checks for late arrivals before it sleeps again.
        if was_empty && let Err(error) = self.waker.wake() {
            log::error!("could not wake the reactor: {error}");
        }
    }

    /// Takes every call queued so far (R-15: later arrivals wait for the next iteration).
    pub(crate) fn take_all(&self) -> VecDeque<ThreadCall> {
        std::mem::take(&mut *self.lock())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// A `Send` handle on a reactor, for other threads: it can only hand calls over.
#[derive(Clone)]
pub struct ReactorHandle {
    queue: Arc<ThreadQueue>,
}

impl ReactorHandle {
    pub(crate) fn new(queue: Arc<ThreadQueue>) -> ReactorHandle {
        ReactorHandle { queue }
    }

    /// Queues `f` to run on the reactor thread and wakes the reactor.
    ///
    /// Calls run in FIFO order, each exactly once, in the first iteration that begins
    /// after they were queued. An `Err` returned by `f` is logged.
    /// Calls queued after the reactor has ended never run.
    pub fn call_from_thread<F, R>(&self, f: F)
    where
        F: FnOnce(&Reactor) -> R + Send + 'static,
        R: CallResult,
    {
        self.queue.push(Box::new(move |reactor| {
            if let Err(failure) = f(reactor).into_call_result() {
                log::error!("Unhandled error in a call from another thread: {failure}");
            }
        }));
    }
}

impl std::fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReactorHandle")
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of worker threads fed by one queue; started on first use.
pub(crate) struct WorkerPool {
    jobs: mpsc::Sender<Job>,
}

/// How many blocking jobs run at once. Name lookups are the main use: a few in parallel
/// hide their latency, and more would only queue inside the resolver.
pub(crate) const WORKER_THREADS: usize = 4;

impl WorkerPool {
    pub(crate) fn start() -> std::io::Result<WorkerPool> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..WORKER_THREADS {
            let receiver = receiver.clone();
            thread::Builder::new()
                .name(format!("twistctl-worker-{index}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let guard = receiver.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            // The pool was dropped with its reactor.
                            Err(mpsc::RecvError) => return,
                        }
                    }
                })?;
        }
        Ok(WorkerPool { jobs })
    }

    /// Queues a job; false when every worker has gone.
    pub(crate) fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }
}

/// Runs `f` catching a panic, so one bad job cannot kill a worker.
pub(crate) fn run_caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a job panicked".to_string()
    }
}
