//! Runs the database on its own, like any service: `MICRO_SERVER` (the server's proxy),
//! `MICRO_AUTH_ID` and `MICRO_AUTH_SECRET` (an account of the `micro` namespace with the
//! `data` and `platform` scopes) and `MICRO_DB_PATH` (the SQLite file, default
//! `micro-db.sqlite`) or `MICRO_DB_URL` (a PostgreSQL database, which several of them
//! may share) configure it. `micro server` hosts it in-process unless
//! `MICRO_SERVICES` leaves it out.

#[tokio::main]
async fn main() {
    let settings = match micro_db::Settings::from_vars("micro-db.sqlite".into(), |k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let db = match micro_db::Db::connect(&settings, None).await {
        Ok(db) => db,
        Err(e) if settings.url.is_some() => {
            eprintln!("error: the database (PostgreSQL): {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {}: {e}", settings.path.display());
            std::process::exit(1);
        }
    };
    if let Err(e) = micro_db::service_with(micro::Service::new(micro_db::NAME), db).run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
