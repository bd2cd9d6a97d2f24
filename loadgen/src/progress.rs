//! Where progress goes: one live `indicatif` bar when stderr is a terminal, the per-second text lines
//! otherwise (CI, pipes, `ip netns exec … > file`), as chosen by `--progress`.
//!
//! While a bar is on screen, every other stderr message must go through [`note`], which prints it above
//! the bar instead of into the middle of it.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `--progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A live bar when stderr is a terminal, per-second lines otherwise.
    Auto,
    /// Always the per-second lines.
    Lines,
}

impl ProgressMode {
    /// Whether this mode shows a bar, given whether stderr is a terminal.
    pub fn bar(self, stderr_is_terminal: bool) -> bool {
        match self {
            Self::Auto => stderr_is_terminal,
            Self::Lines => false,
        }
    }
}

/// Terminals at least this wide get the bar and the figures on one line; narrower ones get two lines.
const ONE_LINE_MIN_COLS: u16 = 130;

/// The bar being drawn, if any: [`note`] prints above it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Print one line to stderr without tearing the progress bar (above it while one is drawn).
pub fn note(line: impl AsRef<str>) {
    let bar = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match bar {
        Some(bar) => bar.suspend(|| eprintln!("{}", line.as_ref())),
        None => eprintln!("{}", line.as_ref()),
    }
}

/// The live bar of one run (a no-op handle when progress goes to lines).
#[derive(Clone, Debug, Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Progress as per-second lines.
    pub fn lines() -> Self {
        Self { bar: None }
    }

    /// A bar if `mode` asks for one here (stderr a terminal for `auto`), lines otherwise. `duration` is the
    /// length of the write phase (a bounded bar) or None (a spinner: run until Ctrl-C).
    pub fn new(mode: ProgressMode, id: &str, duration: Option<Duration>) -> Self {
        if !mode.bar(std::io::stderr().is_terminal()) {
            return Self::lines();
        }
        let cols = console::Term::stderr().size_checked().map_or(80, |(_, cols)| cols);
        let bar = ProgressBar::with_draw_target(
            duration.map(|d| d.as_secs_f64().ceil() as u64),
            ProgressDrawTarget::stderr(),
        );
        let head = match (duration.is_some(), cols >= ONE_LINE_MIN_COLS) {
            (true, true) => "{prefix:.bold} {pos:>3}/{len}s [{bar:24.cyan/blue}]",
            (true, false) => "{prefix:.bold} {pos:>3}/{len}s [{wide_bar:.cyan/blue}]",
            (false, _) => "{prefix:.bold} {pos:>3}s {spinner}",
        };
        let sep = if cols >= ONE_LINE_MIN_COLS || duration.is_none() { " " } else { "\n  " };
        let style = ProgressStyle::with_template(&format!("{head}{sep}{{wide_msg}}"))
            .expect("valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("[{id}] {}", Stage::Write.label()));
        bar.set_message("connecting…");
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        Self { bar: Some(bar) }
    }

    /// True when progress is a live bar (and the per-second lines are not printed).
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Show the stage of the run in the bar's prefix.
    pub fn stage(&self, id: &str, stage: Stage) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("[{id}] {}", stage.label()));
            if stage != Stage::Write {
                // The write phase is over: a full bar, however long the drain takes.
                if let Some(len) = bar.length() {
                    bar.set_position(len);
                }
            }
        }
    }

    /// One update: seconds since the start (capped at the bar's length) and the figures.
    pub fn update(&self, elapsed_s: u64, msg: impl Into<Cow<'static, str>>) {
        if let Some(bar) = &self.bar {
            let pos = bar.length().map_or(elapsed_s, |len| elapsed_s.min(len));
            bar.set_position(pos);
            bar.set_message(msg);
        }
    }

    /// Leave the last frame on screen and route [`note`] to plain stderr again.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            // One run per process: the active bar is this one.
            *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
            bar.finish();
        }
    }
}

/// Stages of a run, as the bar's prefix shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connecting and writing.
    Write,
    /// Waiting for acks and visibility, then comparing replicas with the server's canvas.
    Verify,
    /// Closing connections.
    Close,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Self::Write => "write ",
            Self::Verify => "verify",
            Self::Close => "close ",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert!(ProgressMode::Auto.bar(true));
        assert!(!ProgressMode::Auto.bar(false));
        assert!(!ProgressMode::Lines.bar(true));
        let p = Progress::lines();
        assert!(!p.is_bar());
        p.update(3, "x");
        p.stage("t", Stage::Verify);
        p.finish();
    }
}
