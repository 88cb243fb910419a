//! The database product's filter language on arbitrary input: never panics; what parses
//! becomes SQL whose text depends on the filter's shape only (every string is a
//! parameter: changing them all changes no character of the SQL).
#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_db::filter::{Expr, Operand};

fn blank(e: &mut Expr) {
    match e {
        Expr::And(items) | Expr::Or(items) => items.iter_mut().for_each(blank),
        Expr::Cmp(c) => {
            for o in [&mut c.left, &mut c.right] {
                if let Operand::Str(s) = o {
                    *s = format!("x{}'\"%_\\", s.len());
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(expr) = micro_db::filter::parse(&text) else { return };
    let request = micro_db::sql::Request::default();
    let clause = micro_db::sql::sqlite(&expr, &request);
    let mut other = expr.clone();
    blank(&mut other);
    let again = micro_db::sql::sqlite(&other, &request);
    assert_eq!(clause.sql, again.sql, "a string changed the SQL text");
    assert_eq!(clause.params.len(), again.params.len());
});
