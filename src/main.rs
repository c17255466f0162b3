use std::process::ExitCode;

use clap::Parser;

use archiver_operator::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    exit_quietly_when_stdout_closes();
    // Installed (or linked) as `kubectl-archiver`, the binary is a kubectl
    // plugin with its own, smaller command set.
    if archiver_operator::plugin::invoked_as_plugin(std::env::args_os().next().as_ref()) {
        return archiver_operator::plugin::run(std::env::args_os()).await;
    }
    let cli = Cli::parse();
    cli::run(cli).await
}

/// The commands of `cli` stop writing quietly when the reader of standard
/// output goes away (`| head`, `| grep -q`). Output still printed with
/// `println!` elsewhere would panic there with a backtrace; this ends the
/// process instead, quietly, with the status a death by SIGPIPE gives
/// (128 + 13), since the command's own result is not known at that point.
/// SIGPIPE itself stays ignored: dying of it would also kill the operator
/// whenever the peer of one of its sockets goes away.
fn exit_quietly_when_stdout_closes() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(128 + libc::SIGPIPE);
        }
        previous(info);
    }));
}
