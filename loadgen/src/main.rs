//! `client`: the canvas load generator (see the `client` library docs and `client --help`).

use std::process::ExitCode;

use clap::Parser;
use client::config::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("client: {e}");
        return ExitCode::from(2);
    }
    client::run::main(args)
}
