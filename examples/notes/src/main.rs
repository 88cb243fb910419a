//! Runs the notes example: `micro server`, then `cargo run -p notes`, then
//! `curl -d '{"title":"hi"}' http://127.0.0.1:8080/notes/create`.

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MICRO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    if let Err(e) = notes::service().run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
