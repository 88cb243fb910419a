//! The `micro` binary: `micro server` and the command line.

mod app;
mod auth;
mod cache;
mod cli;
mod cluster;
mod data;
mod db;
mod domain;
mod dynamic;
mod envs;
mod licence;
mod network;
mod new;
mod output;
mod ratelimit;
mod runtime;
mod team;
mod trace;
mod usage;

/// mimalloc rather than the system's allocator: it gives freed memory back to the system
/// (glibc's keeps what a burst took: each product's account hash, 19 MiB, stayed), so an
/// idle server stays small.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    output::exit_quietly_when_stdout_closes();
    let code = cli::run(std::env::args().collect()).await;
    std::process::exit(code);
}
