//! Temporary minimal Deferred (replaced by the full implementation).
use super::failure::Failure;
use std::cell::RefCell;
use std::rc::Rc;

/// What a callback step returns.
pub enum Step<T: 'static> {
    /// A value.
    Value(T),
    /// A failure.
    Fail(Failure),
    /// Wait on an inner deferred.
    Wait(Deferred<T>),
}

type Cb<T> = Box<dyn FnOnce(Result<T, Failure>) -> Step<T>>;
struct State<T: 'static> {
    result: Option<Result<T, Failure>>,
    called: bool,
    chain: Vec<Cb<T>>,
}
/// A deferred result.
pub struct Deferred<T: 'static> {
    state: Rc<RefCell<State<T>>>,
}
impl<T> Clone for Deferred<T> {
    fn clone(&self) -> Self {
        Deferred {
            state: self.state.clone(),
        }
    }
}
/// Fired twice.
#[derive(Debug, thiserror::Error)]
#[error("already called")]
pub struct AlreadyCalledError;

impl<T: 'static> Default for Deferred<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: 'static> Deferred<T> {
    /// New.
    pub fn new() -> Self {
        Deferred {
            state: Rc::new(RefCell::new(State {
                result: None,
                called: false,
                chain: Vec::new(),
            })),
        }
    }
    /// Fired?
    pub fn is_called(&self) -> bool {
        self.state.borrow().called
    }
    /// Fire.
    pub fn callback(&self, v: T) -> Result<(), AlreadyCalledError> {
        self.fire(Ok(v))
    }
    /// Fire with failure.
    pub fn errback(&self, f: impl Into<Failure>) -> Result<(), AlreadyCalledError> {
        self.fire(Err(f.into()))
    }
    fn fire(&self, r: Result<T, Failure>) -> Result<(), AlreadyCalledError> {
        {
            let mut s = self.state.borrow_mut();
            if s.called {
                return Err(AlreadyCalledError);
            }
            s.called = true;
            s.result = Some(r);
        }
        self.run();
        Ok(())
    }
    fn run(&self) {
        loop {
            let (cb, r) = {
                let mut s = self.state.borrow_mut();
                if s.chain.is_empty() || s.result.is_none() {
                    return;
                }
                let cb = s.chain.remove(0);
                let r = s.result.take();
                (cb, r)
            };
            let Some(r) = r else { return };
            let next = match cb(r) {
                Step::Value(v) => Ok(v),
                Step::Fail(f) => Err(f),
                Step::Wait(_) => return,
            };
            self.state.borrow_mut().result = Some(next);
        }
    }
    /// Add both.
    pub fn add_both(&self, f: impl FnOnce(Result<T, Failure>) -> Step<T> + 'static) -> &Self {
        self.state.borrow_mut().chain.push(Box::new(f));
        if self.is_called() {
            self.run();
        }
        self
    }
}
