//! `server replay --data-dir DIR ...`: the canvas's history from its placement log, read-only (safe beside a
//! running server): the canvas at any tick as a PNG, a PNG frame every N ticks, or one animated PNG.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use placelog::local::Reader;
use server::ops::live::{canvas_encoder, canvas_png};

/// Frames an animation may have at most (raise --every for a longer history).
const MAX_FRAMES: u64 = 20_000;

#[derive(Debug, Parser)]
#[command(name = "server replay", about = "Rebuild the canvas from a --data-dir's placement log")]
pub(crate) struct ReplayArgs {
    /// The server's --data-dir.
    #[arg(long)]
    data_dir: PathBuf,
    /// Rebuild the canvas as it was after this tick (default: the newest).
    #[arg(long)]
    at: Option<u64>,
    /// Write the canvas at --at here (indexed PNG, the live page's palette).
    #[arg(long)]
    png: Option<PathBuf>,
    /// Write a PNG frame every --every ticks into this directory (frame-<tick>.png).
    #[arg(long)]
    frames: Option<PathBuf>,
    /// Write an animated PNG (a frame every --every ticks, up to --at) here.
    #[arg(long)]
    apng: Option<PathBuf>,
    /// Ticks between frames (600 = one a minute at the default 100 ms tick).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Animated PNG frames per second.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    fps: u16,
}

pub(crate) fn main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let a = ReplayArgs::parse_from(std::iter::once("server replay".into()).chain(args));
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server replay: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &ReplayArgs) -> Result<(), Box<dyn std::error::Error>> {
    let reader = Reader::new(&a.data_dir);
    let dims = reader.dims()?;
    // First pass: how far the history goes.
    let (mut ticks, mut changes, mut last) = (0u64, 0u64, 0u64);
    let torn = reader.for_each(|b| {
        ticks += 1;
        changes += b.changes.len() as u64;
        last = b.tick;
    })?;
    let at = a.at.unwrap_or(last);
    let frames = at / a.every + 1;
    if a.apng.is_some() && frames > MAX_FRAMES {
        return Err(
            format!("{frames} frames at --every {}: more than {MAX_FRAMES}; raise --every", a.every).into()
        );
    }
    if let Some(d) = &a.frames {
        std::fs::create_dir_all(d).map_err(|e| format!("--frames {}: {e}", d.display()))?;
    }
    let mut anim = match &a.apng {
        Some(p) => {
            let f = File::create(p).map_err(|e| format!("--apng {}: {e}", p.display()))?;
            let mut e = canvas_encoder(BufWriter::new(f), dims);
            e.set_animated(frames as u32, 0)?;
            e.set_frame_delay(1, a.fps)?;
            Some(e.write_header()?)
        }
        None => None,
    };
    let mut pixels = vec![0u8; dims.len()];
    let mut next_frame = 0u64;
    let mut emit = |upto: u64, pixels: &[u8]| -> Result<(), Box<dyn std::error::Error>> {
        // Every frame boundary at or before `upto` shows the canvas as it is now.
        while next_frame <= upto.min(at) && a.frames.is_some() | anim.is_some() {
            let t = next_frame;
            if let Some(d) = &a.frames {
                std::fs::write(d.join(format!("frame-{t:012}.png")), canvas_png(dims, pixels)?)?;
            }
            if let Some(w) = anim.as_mut() {
                w.write_image_data(pixels)?;
            }
            next_frame += a.every;
        }
        Ok(())
    };
    let mut err = None;
    reader.for_each(|b| {
        if b.tick > at || err.is_some() {
            return;
        }
        // Frames for the boundaries before this tick show the canvas before it (ticks in the log are >= 1).
        if let Err(e) = emit(b.tick - 1, &pixels) {
            err = Some(e);
            return;
        }
        for &(i, c) in &b.changes {
            pixels[i as usize] = c;
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    emit(at, &pixels)?;
    if let Some(w) = anim {
        w.finish()?;
    }
    if let Some(p) = &a.png {
        std::fs::write(p, canvas_png(dims, &pixels)?).map_err(|e| format!("--png {}: {e}", p.display()))?;
    }
    println!(
        "{}: {}x{} canvas, {ticks} changing ticks, {changes} changes, newest tick {last}{}; at tick {at}: hash {:016x}",
        a.data_dir.display(),
        dims.width,
        dims.height,
        if torn > 0 { format!(" ({torn} bytes of an incomplete last record ignored)") } else { String::new() },
        canvas::hash::full(&pixels)
    );
    Ok(())
}
