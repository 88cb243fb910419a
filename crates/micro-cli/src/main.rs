//! The `micro` binary: `micro server` and the command line.

mod auth;
mod cache;
mod cli;
mod cluster;
mod data;
mod db;
mod domain;
mod dynamic;
mod envs;
mod new;
mod output;
mod ratelimit;
mod runtime;
mod team;
mod trace;
mod usage;

#[tokio::main]
async fn main() {
    output::exit_quietly_when_stdout_closes();
    let code = cli::run(std::env::args().collect()).await;
    std::process::exit(code);
}
