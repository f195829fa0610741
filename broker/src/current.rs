//! [`Current`]: a part of the configuration that a reload replaces while
//! the broker runs (the catalog the API reads, the devices allowed to log
//! in, the integrations' tokens, the web app's people).
//!
//! A reader takes the value as it is now and keeps it for the rest of its
//! work (one login, one request): a reload never changes what a request
//! already started with.

use std::sync::{Arc, RwLock};

/// The current value of a reloadable part. Cheap to clone: clones share it.
#[derive(Debug)]
pub struct Current<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Current<T> {
    fn clone(&self) -> Self {
        Current(Arc::clone(&self.0))
    }
}

impl<T> Current<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Current<T> {
        Current(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The value now.
    pub fn get(&self) -> Arc<T> {
        // A writer only swaps a pointer: a poisoned lock still holds a
        // whole value.
        match self.0.read() {
            Ok(value) => Arc::clone(&value),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the value for every reader from now on.
    pub fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut slot) => *slot = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Current;

    #[test]
    fn a_reader_keeps_what_it_took_and_the_next_sees_the_new_value() {
        let menu = Current::new(vec!["burger"]);
        let shared = menu.clone();
        let taken = menu.get();
        shared.set(vec!["burger", "cheeseburger"]);
        assert_eq!(*taken, vec!["burger"]);
        assert_eq!(*menu.get(), vec!["burger", "cheeseburger"]);
    }
}
