//! Progress of long runs (dump, restore, verify, salvage): an indicatif bar
//! on stderr when stderr is a terminal, plain log lines otherwise (one per
//! step the command names, and a byte count at most every five seconds).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-counting progress display.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    total: u64,
    done: u64,
    last_line: Instant,
}

/// `1.5 GiB`-style sizes for humans.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl Progress {
    /// A display for `total` bytes of work named `label`.
    pub fn new(label: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            label,
            total,
            done: 0,
            last_line: Instant::now(),
        }
    }

    /// Whether a bar is drawn (stderr is a terminal).
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// `n` more bytes done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                if self.last_line.elapsed() >= Duration::from_secs(5) {
                    self.last_line = Instant::now();
                    eprintln!(
                        "{}: {} of {}",
                        self.label,
                        human_bytes(self.done),
                        human_bytes(self.total)
                    );
                }
            }
        }
    }

    /// Names the current step (a bar's message; a log line otherwise).
    pub fn step(&mut self, message: String) {
        match &self.bar {
            Some(bar) => bar.set_message(message),
            None => eprintln!("{}: {message}", self.label),
        }
    }

    /// A finding shown live above the bar; without a bar it is left to
    /// the command's final report (so it is not printed twice).
    pub fn println(&self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.println(line);
        }
    }

    /// Removes the bar (or logs the final count).
    pub fn finish(self) {
        match self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{}: {} done", self.label, human_bytes(self.done)),
        }
    }
}

/// A one-line live status (the bench's ops/s, p99, errors) redrawn in
/// place on stderr when stderr is a terminal; nothing otherwise, so logs
/// and pipes get only the final report.
pub struct StatusLine {
    bar: Option<ProgressBar>,
}

impl StatusLine {
    /// A status line prefixed with `label`, drawn only on a terminal.
    pub fn new(label: &'static str) -> StatusLine {
        StatusLine::drawn_if(label, std::io::stderr().is_terminal())
    }

    /// A status line that is drawn when `drawn` (tests pass `false`).
    pub fn drawn_if(label: &'static str, drawn: bool) -> StatusLine {
        let bar = drawn.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(label);
            bar
        });
        StatusLine { bar }
    }

    /// Whether the line is drawn.
    pub fn is_drawn(&self) -> bool {
        self.bar.is_some()
    }

    /// Replaces the line's text.
    pub fn set(&self, text: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(text);
        }
    }

    /// Prints `line` above the status line (or plainly without one).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
