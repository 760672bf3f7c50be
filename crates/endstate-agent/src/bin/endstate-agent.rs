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
    // One thread runs the agent: its work is waiting (on processes, sockets, timers), and every
    // worker thread more keeps a malloc arena and a stack of its own for nothing on an idle
    // host. Blocking work goes to the blocking pool, whose idle threads leave after a second.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
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
