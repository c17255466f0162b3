use std::process::ExitCode;

use clap::Parser;

use archiver_operator::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::run(cli).await
}
