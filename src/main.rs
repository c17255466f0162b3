use std::process::ExitCode;

use clap::Parser;

use archiver_operator::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    // Installed (or linked) as `kubectl-archiver`, the binary is a kubectl
    // plugin with its own, smaller command set.
    if archiver_operator::plugin::invoked_as_plugin(std::env::args_os().next().as_ref()) {
        return archiver_operator::plugin::run(std::env::args_os()).await;
    }
    let cli = Cli::parse();
    cli::run(cli).await
}
