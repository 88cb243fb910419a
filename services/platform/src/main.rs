//! Runs the platform on its own, like any service: `MICRO_SERVER` (the server's proxy),
//! `MICRO_AUTH_ID` and `MICRO_AUTH_SECRET` (an account of the `micro` namespace with the
//! `admin`, `data` and `platform` scopes) and `MICRO_PLATFORM_URL` (the dashboard's
//! public address, for links in mail) configure it. `micro server` hosts it in-process
//! unless `MICRO_SERVICES` leaves it out.

#[tokio::main]
async fn main() {
    if let Err(e) = micro_platform::service(micro::Service::new(micro_platform::NAME)).run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
