//! `switchyard`: run the whole stack locally and talk to every service.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    switchyard_cli::run(switchyard_cli::Cli::parse()).await
}
