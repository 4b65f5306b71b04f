//! What the V-Hub needs of the manager: a session's endpoint.

use super::{Manager, lock};
use crate::error::Result;

impl Manager {
    /// The listening socket of session `name`'s V-Hub endpoint, from its
    /// runtime (`None` where the runtime has none): a connection on it
    /// comes from that session's sandbox.
    pub fn vhub_listener(&self, name: &str) -> Result<Option<std::os::unix::net::UnixListener>> {
        let slot = self.slot(name)?;
        let box_id = lock(&slot.record).box_id.clone();
        self.runtime.vhub_listener(&box_id)
    }
}
