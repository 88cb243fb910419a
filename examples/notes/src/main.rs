//! Runs the notes example: `micro server`, then `cargo run -p notes`, then
//! `curl -d '{"title":"hi"}' http://127.0.0.1:8080/notes/create`.

#[tokio::main]
async fn main() {
    if let Err(e) = notes::service().run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
