//! The conformance suite's backends: every test of the database runs once with its
//! records in embedded SQLite and once in PostgreSQL (`MICRO_TEST_POSTGRES`, a schema
//! of the test's own), through the same real server and the same assertions.

use micro_test::process::ServerProcess;

/// Where a test server keeps the database's records.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Backend {
    /// The embedded default: a SQLite file in the data dir.
    Sqlite,
    /// PostgreSQL (`MICRO_DB_URL`).
    Postgres,
}

/// The `micro` binary the tests run.
pub(crate) fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

/// A server whose database keeps its records on `backend`, with `env`; `name` names the
/// PostgreSQL schema (made afresh). `None` (with a notice) when PostgreSQL is not
/// configured; it fails instead where backends are required.
pub(crate) async fn server(
    backend: Backend,
    name: &str,
    env: &[(&str, &str)],
) -> Option<(ServerProcess, Option<micro_test::PgSchema>)> {
    match backend {
        Backend::Sqlite => Some((ServerProcess::start(&micro(), env), None)),
        Backend::Postgres => {
            let base = micro_conformance::backend_url("MICRO_TEST_POSTGRES")?;
            let schema = micro_test::PgSchema::create(&base, &format!("micro_db_{name}")).await;
            let mut all: Vec<(&str, &str)> = vec![("MICRO_DB_URL", schema.url.as_str())];
            all.extend_from_slice(env);
            Some((ServerProcess::start(&micro(), &all), Some(schema)))
        }
    }
}

/// Each named test (an `async fn(Backend)`) as two tests: `sqlite::<name>` and
/// `postgres::<name>`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}
