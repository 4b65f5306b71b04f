//! What the V-Hub needs of the manager: a session's endpoint.

use super::{Manager, lock};
use crate::error::Result;

impl Manager {
    /// The listening socket of session `name`'s V-Hub endpoint while its
    /// sandbox runs, and the boot that bound it, from its runtime (`None`
    /// when stopped or where the runtime has none): a connection on it
    /// comes from that session's sandbox.
    pub fn vhub_listener(
        &self,
        name: &str,
    ) -> Result<Option<(u64, std::os::unix::net::UnixListener)>> {
        let slot = self.slot(name)?;
        let box_id = lock(&slot.record).box_id.clone();
        self.runtime.vhub_listener(&box_id)
    }
}

impl Manager {
    /// Every session's name and box id, cheaply (no usage read): what the
    /// hub polls to serve endpoints.
    pub fn session_boxes(&self) -> Vec<(String, String)> {
        let slots: Vec<_> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .map(|s| {
                let r = lock(&s.record);
                (r.name.clone(), r.box_id.clone())
            })
            .collect()
    }

    /// Whether a session of this name exists.
    pub fn has_session(&self, name: &str) -> bool {
        self.slot(name).is_ok()
    }
}
