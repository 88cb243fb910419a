//! The database product's filter language on arbitrary input: never panics; what parses
//! becomes SQL of the fixed vocabulary only, every value a parameter.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(expr) = micro_db::filter::parse(&text) else { return };
    let clause = micro_db::sql::sqlite(&expr, &micro_db::sql::Request::default());
    let sql = clause.sql.replace("ESCAPE '\\'", "");
    assert!(
        sql.chars().all(|c| c.is_ascii_alphanumeric() || " ()?,_<>=!".contains(c)),
        "a value reached the SQL text: {sql}"
    );
    let placeholders = (1..=clause.params.len()).all(|i| sql.contains(&format!("?{i}")));
    assert!(placeholders, "{sql}: {} parameters", clause.params.len());
});
