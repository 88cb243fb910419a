//! The `micro` binary: `micro server` and the command line.

mod auth;
mod cli;
mod data;
mod dynamic;
mod envs;
mod new;
mod output;
mod runtime;

/// mimalloc instead of the system allocator: the gateway and proxy allocate and free many
/// small buffers per request, and glibc's malloc/free took ~30% of the gateway's CPU
/// under load (docs/BENCHMARKS.md, "Optimisations").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let code = cli::run(std::env::args().collect()).await;
    std::process::exit(code);
}
