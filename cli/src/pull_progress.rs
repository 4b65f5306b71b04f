//! Progress bars of a pull on stderr: one per blob and a total, on a
//! terminal only and never with --json.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};

use blink_sdk::image::{PullEvent, PullProgress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::output::Context;

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    /// Per blob: its bar and the bytes it has so far.
    blobs: HashMap<String, (ProgressBar, u64)>,
}

/// The bars of one pull (nothing when they would not be seen).
pub struct PullBars(Option<Arc<Mutex<Bars>>>);

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl PullBars {
    pub fn start(ctx: &Context, reference: &str) -> Self {
        if ctx.json || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let multi = MultiProgress::new();
        let total = multi.add(ProgressBar::new(0));
        total.set_style(style(
            "{msg:<24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ));
        total.set_message(format!("pulling {reference}"));
        Self(Some(Arc::new(Mutex::new(Bars {
            multi,
            total,
            blobs: HashMap::new(),
        }))))
    }

    /// The callback to hand to the pull.
    pub fn callback(&self) -> Option<PullProgress> {
        let bars = self.0.clone()?;
        Some(Arc::new(move |event: &PullEvent| {
            let Ok(mut b) = bars.lock() else {
                return;
            };
            b.on(event);
        }))
    }

    pub fn finish(self) {
        if let Some(bars) = self.0
            && let Ok(b) = bars.lock()
        {
            for (bar, _) in b.blobs.values() {
                bar.finish_and_clear();
            }
            b.total.finish_and_clear();
            let _ = b.multi.clear();
        }
    }
}

impl Bars {
    fn on(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Resolved { blobs, .. } => {
                self.total.set_length(blobs.iter().map(|(_, s)| s).sum());
                for (digest, size) in blobs {
                    let bar = self.multi.add(ProgressBar::new(*size));
                    bar.set_style(style("{msg:<24} [{bar:30}] {bytes}/{total_bytes}"));
                    bar.set_message(short(digest));
                    self.blobs.insert(digest.clone(), (bar, 0));
                }
            }
            PullEvent::Blob { digest, done, .. } => {
                if let Some((bar, had)) = self.blobs.get_mut(digest) {
                    let delta = done.saturating_sub(*had);
                    *had = *done;
                    bar.set_position(*done);
                    self.total.inc(delta);
                }
            }
            PullEvent::BlobDone {
                digest,
                size,
                cached,
            } => {
                if let Some((bar, had)) = self.blobs.get_mut(digest) {
                    self.total.inc(size.saturating_sub(*had));
                    *had = *size;
                    bar.set_position(*size);
                    let note = if *cached { "already here" } else { "done" };
                    bar.finish_with_message(format!("{} {note}", short(digest)));
                }
            }
        }
    }
}

/// `sha256:0123456789ab` for a bar's label.
fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}
