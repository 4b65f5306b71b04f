//! The local terminal during `session spawn --tty`: raw mode while attached,
//! restored on every way out (normal exit, error, panic unwinding).

use std::io::IsTerminal;

use blink_sdk::runtime::PtySize;
use rustix::termios::{self, OptionalActions, Termios};

/// Size of our terminal, or 24x80 when stdout is not one.
pub fn size() -> PtySize {
    match termios::tcgetwinsize(std::io::stdout()) {
        Ok(ws) if ws.ws_row > 0 && ws.ws_col > 0 => PtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        },
        _ => PtySize::default(),
    }
}

/// Raw mode on stdin; dropping it restores the saved settings.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Enter raw mode if stdin is a terminal.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Flush, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Flush, &self.saved);
    }
}
