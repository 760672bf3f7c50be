//! `endstate-agent`: the host agent alone, without the server and the CLI, so a host maps fewer
//! pages of a smaller binary. The same flags as `endstate agent`, with `--server`.

use std::process::ExitCode;

use clap::Parser;

/// Runs the endstate agent on this host.
#[derive(Debug, Parser)]
#[command(name = "endstate-agent", version, about)]
struct Cli {
    /// The server's API, like https://endstate.example:7700.
    #[arg(long, env = "ENDSTATE_SERVER")]
    server: String,
    #[command(flatten)]
    agent: endstate_agent::cli::AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(endstate_agent::cli::run(cli.server, cli.agent)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
