//! `client`: the canvas load generator (see the `loadgen` library docs and `client --help`).

use std::process::ExitCode;

use clap::Parser;
use loadgen::config::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("client: {e}");
        return ExitCode::from(2);
    }
    loadgen::run::main(args)
}
