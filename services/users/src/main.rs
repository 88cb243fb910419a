//! Runs Users on its own, like any service: `MICRO_SERVER` (the server's proxy),
//! `MICRO_AUTH_ID` and `MICRO_AUTH_SECRET` (an account of the `micro` namespace with the
//! `data`, `platform` and `issuer` scopes) configure it. `micro server` hosts it
//! in-process unless `MICRO_SERVICES` leaves it out.

#[tokio::main]
async fn main() {
    if let Err(e) = micro_users::service_with(micro::Service::new(micro_users::NAME)).run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
