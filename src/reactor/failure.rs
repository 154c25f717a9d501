//! [`Failure`]: an error value travelling down a [`Deferred`](super::Deferred) chain or
//! reported as the reason a connection ended.
//!
//! A `Failure` wraps the original error object (not a copy of its message), so an errback
//! can ask what kind of error it is with [`Failure::check`] or [`Failure::downcast_ref`],
//! the Rust form of Twisted's `check`/`trap` (spec D-29, D-30).

use std::error::Error;
use std::fmt;
use std::rc::Rc;

/// An error travelling down a callback chain: the original error, shared cheaply.
///
/// Cloning a `Failure` shares the same error object, so identity is preserved
/// (`Rc::ptr_eq` on [`Failure::error`]). Wrapping a `Failure` in a `Failure` through
/// [`Failure::new`] yields the inner one: failures never nest (D-30).
#[derive(Clone)]
pub struct Failure {
    error: Rc<dyn Error + 'static>,
}

/// A plain error carrying only a message, for failures that have no richer type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageError(pub String);

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for MessageError {}

impl Failure {
    /// Wraps an error. A `Failure` passed in is returned as it is (no nesting).
    pub fn new<E: Error + 'static>(error: E) -> Failure {
        let boxed: Box<dyn Error + 'static> = Box::new(error);
        Failure::from_box(boxed)
    }

    /// Wraps an already boxed error.
    pub fn from_box(error: Box<dyn Error + 'static>) -> Failure {
        match error.downcast::<Failure>() {
            Ok(inner) => *inner,
            Err(error) => Failure {
                error: Rc::from(error),
            },
        }
    }

    /// A failure whose error is a [`MessageError`] with this text.
    pub fn msg(message: impl Into<String>) -> Failure {
        Failure::new(MessageError(message.into()))
    }

    /// The error's display string (Twisted's `getErrorMessage`).
    pub fn error_message(&self) -> String {
        self.error.to_string()
    }

    /// The wrapped error object itself.
    pub fn error(&self) -> &Rc<dyn Error + 'static> {
        &self.error
    }

    /// The wrapped error as a concrete type, if it is one.
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.error.downcast_ref::<E>()
    }

    /// True when the wrapped error is of type `E` (Twisted's `check` for one type).
    pub fn check<E: Error + 'static>(&self) -> bool {
        self.error.is::<E>()
    }

    /// Keeps going only for errors of type `E` (Twisted's `trap`): returns `Ok(self)` when
    /// the error is an `E`, and `Err(self)` otherwise so that an errback can pass the same
    /// failure on with `?`.
    pub fn trap<E: Error + 'static>(self) -> Result<Failure, Failure> {
        if self.check::<E>() {
            Ok(self)
        } else {
            Err(self)
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Failure({:?})", self.error)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)?;
        // The chain of causes is the Rust form of a traceback's context.
        let mut source = self.error.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.source()
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure::new(error)
    }
}

impl From<MessageError> for Failure {
    fn from(error: MessageError) -> Failure {
        Failure::new(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn d29_failure_keeps_the_original_error_object() {
        let failure = Failure::new(io::Error::other("disk on fire"));
        let copy = failure.clone();
        assert!(Rc::ptr_eq(failure.error(), copy.error()));
        assert_eq!(failure.error_message(), "disk on fire");
        assert_eq!(
            failure.downcast_ref::<io::Error>().map(|e| e.kind()),
            Some(io::ErrorKind::Other)
        );
    }

    #[test]
    fn d30_check_and_trap_select_by_type_and_failures_do_not_nest() {
        let failure = Failure::msg("boom");
        assert!(failure.check::<MessageError>());
        assert!(!failure.check::<io::Error>());
        let trapped = failure
            .clone()
            .trap::<MessageError>()
            .map(|f| f.error_message());
        assert_eq!(trapped.ok().as_deref(), Some("boom"));
        let passed_on = failure.clone().trap::<io::Error>();
        assert!(passed_on.is_err_and(|f| Rc::ptr_eq(f.error(), failure.error())));
        let wrapped = Failure::new(failure.clone());
        assert!(Rc::ptr_eq(wrapped.error(), failure.error()));
    }
}
