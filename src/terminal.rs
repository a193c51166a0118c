//! Progress bars for `run` on a terminal: one per mirror with rows, rate,
//! ETA and the throttle state. Log lines are printed above the bars (the
//! writer suspends the bars while a line is written), so neither garbles
//! the other. Off a terminal, `run` logs a status line at an interval
//! instead.

use std::io::{self, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backfill::SharedProgress;
use crate::estimate::human_eta;

/// A `tracing` writer that prints above the bars.
#[derive(Clone)]
pub struct AboveBars(pub MultiProgress);

impl Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.suspend(|| io::stderr().write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A bar set drawn on stderr.
pub fn multi() -> MultiProgress {
    MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5))
}

/// Redraws the bars from `progress` every 200 ms until the task is dropped.
pub async fn draw(multi: MultiProgress, progress: SharedProgress) {
    let style = ProgressStyle::with_template("{prefix:<48!} [{bar:28}] {pos:>10}/{len:<10} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: Vec<ProgressBar> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let p = progress.lock().expect("progress lock").clone();
        while bars.len() < p.mirrors.len() {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bars.push(bar);
        }
        for (bar, m) in bars.iter().zip(&p.mirrors) {
            bar.set_prefix(m.label.clone());
            bar.set_length(m.rows_estimate.max(m.rows_done));
            bar.set_position(m.rows_done);
            let msg = if m.done {
                "backfill done".to_string()
            } else if let Some(reason) = &p.throttle {
                format!("throttled: {reason}")
            } else {
                let eta = m.eta().map(human_eta).unwrap_or_else(|| "?".into());
                format!("{:.0} rows/s, ETA {eta}", m.rate)
            };
            bar.set_message(msg);
        }
    }
}
