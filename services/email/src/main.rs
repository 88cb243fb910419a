//! Runs Email on its own, like any service: `MICRO_SERVER` (the server's proxy),
//! `MICRO_AUTH_ID` and `MICRO_AUTH_SECRET` (an account of the `micro` namespace with the
//! `data` and `platform` scopes), and the mail settings (`MICRO_SMTP`, see
//! `micro_email::Settings`) configure it. `micro server` hosts it in-process unless
//! `MICRO_SERVICES` leaves it out.

#[tokio::main]
async fn main() {
    let settings = match micro_email::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = micro_email::service_with(micro::Service::new(micro_email::NAME), settings).run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
