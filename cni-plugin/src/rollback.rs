//! Undo for a half-done ADD. Each step that creates something records how to take it away;
//! if ADD returns before `commit`, dropping the guard runs those records newest first, so a
//! failed ADD leaves nothing behind whichever step failed.

use crate::error::CniResult;

/// The undo records of one ADD, run on drop unless committed.
pub struct Rollback<'a> {
    /// The network's name, for messages.
    network: &'a str,
    undo: Vec<Undo<'a>>,
}

struct Undo<'a> {
    /// What the action does, as in "releasing address".
    what: &'static str,
    action: Box<dyn FnOnce() -> CniResult<()> + 'a>,
}

impl<'a> Rollback<'a> {
    /// An empty guard for an ADD on `network`.
    pub fn new(network: &'a str) -> Rollback<'a> {
        Rollback {
            network,
            undo: Vec::new(),
        }
    }

    /// Records `action` (described by `what`) to run if the ADD fails from here on.
    pub fn on_failure(&mut self, what: &'static str, action: impl FnOnce() -> CniResult<()> + 'a) {
        self.undo.push(Undo {
            what,
            action: Box::new(action),
        });
    }

    /// The ADD succeeded: keep everything.
    pub fn commit(mut self) {
        self.undo.clear();
    }
}

impl Drop for Rollback<'_> {
    /// Runs every record, newest first; a failing one is reported and the rest still run
    /// (the ADD's own error is what the runtime gets).
    fn drop(&mut self) {
        while let Some(u) = self.undo.pop() {
            if let Err(e) = (u.action)() {
                eprintln!(
                    "twill: network {}: {} after failed ADD: {e}",
                    self.network, u.what
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::error::{CniError, INTERNAL};

    #[test]
    fn undoes_newest_first_and_keeps_going_past_a_failure() {
        let log = RefCell::new(Vec::new());
        {
            let mut rb = Rollback::new("net");
            rb.on_failure("first", || {
                log.borrow_mut().push("address");
                Ok(())
            });
            rb.on_failure("second", || {
                log.borrow_mut().push("veth");
                Err(CniError::new(INTERNAL, "busy"))
            });
            rb.on_failure("third", || {
                log.borrow_mut().push("masquerade");
                Ok(())
            });
        }
        assert_eq!(*log.borrow(), ["masquerade", "veth", "address"]);
    }

    #[test]
    fn a_committed_add_keeps_everything() {
        let log = RefCell::new(Vec::new());
        let mut rb = Rollback::new("net");
        rb.on_failure("release", || {
            log.borrow_mut().push("released");
            Ok(())
        });
        rb.commit();
        assert!(log.borrow().is_empty());
    }
}
