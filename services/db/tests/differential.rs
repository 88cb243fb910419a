//! The PostgreSQL backend's filters against the rules' evaluator (SQLite, which tests
//! every rule on single records: reads, writes and live deliveries): random documents
//! and random filters, each listed on PostgreSQL and tested record by record on SQLite.
//! A list must never hold a record the evaluator rejects (that would be a leak through a
//! list rule), and the two agree everywhere but where PostgreSQL is deliberately
//! stricter (comparisons across JSON types, text of arrays and objects).

use micro_db::pg::PgRecords;
use micro_db::records::{Guard, ListQuery, Records, Write};
use micro_db::sql::{Param, Request};
use serde_json::{Value, json};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn values() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(5),
        json!(-3),
        json!(12.5),
        json!("5"),
        json!("abc"),
        json!("ABC"),
        json!("abd"),
        json!("é"),
        json!("É"),
        json!(""),
        json!("a%b"),
        json!("x_y"),
        json!("null"),
        json!([]),
        json!(["x", "1"]),
        json!([1, true, "abc"]),
        json!({"k": true}),
        json!({"k": 1}),
    ]
}

const LITERALS: [&str; 17] = [
    "null", "true", "false", "0", "1", "5", "-3", "12.5", "'5'", "'abc'", "'ABC'", "'b'", "'é'", "''", "'%'", "'_'",
    "'null'",
];
const FIELDS: [&str; 9] = ["a", "b", "t", "m.k", "m.null", "id", "version", "created", "tags"];
const OPS: [&str; 8] = ["=", "!=", ">", ">=", "<", "<=", "~", "!~"];

fn operand(rng: &mut Rng) -> String {
    match rng.next() % 10 {
        0..=4 => rng.pick(&FIELDS).to_string(),
        5 => "@request.auth.id".into(),
        6 => "@now".into(),
        _ => rng.pick(&LITERALS).to_string(),
    }
}

fn comparison(rng: &mut Rng) -> String {
    let any = rng.next().is_multiple_of(5);
    let left = if any { rng.pick(&["tags", "a", "b"]).to_string() } else { operand(rng) };
    let op = rng.pick(&OPS);
    let right = if rng.next().is_multiple_of(4) { operand(rng) } else { rng.pick(&LITERALS).to_string() };
    format!("{left} {}{op} {right}", if any { "?" } else { "" })
}

fn filter(rng: &mut Rng) -> String {
    match rng.next() % 4 {
        0 => format!("{} && {}", comparison(rng), comparison(rng)),
        1 => format!("({} || {}) && {}", comparison(rng), comparison(rng), comparison(rng)),
        _ => comparison(rng),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_lists_no_record_the_rules_evaluator_rejects() {
    let Some(pg) = micro_conformance::backend_url("MICRO_TEST_POSTGRES") else { return };
    let schema = micro_test::PgSchema::create(&pg, "micro_db_differential").await;
    let database = micro_postgres::Database::connect(&schema.url).expect("a pool");
    let records = PgRecords::open(database).await.expect("the records");
    let (checked, differ) = tokio::task::spawn_blocking(move || {
        let eval = Records::open(std::path::Path::new(":memory:")).expect("an evaluator");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let pool = values();
        let mut writes = Vec::new();
        for i in 0..80 {
            let mut doc = serde_json::Map::new();
            for f in ["a", "b", "t", "tags"] {
                if !rng.next().is_multiple_of(6) {
                    doc.insert(f.into(), rng.pick(&pool).clone());
                }
            }
            if rng.next().is_multiple_of(2) {
                doc.insert("m".into(), json!({"k": rng.pick(&pool).clone(), "null": rng.pick(&pool).clone()}));
            }
            writes.push(Write::Create { id: Some(format!("r{i:02}")), data: Value::Object(doc) });
        }
        records.batch("shop", "docs", writes, &Guard::default()).expect("the documents");
        let request = Request {
            auth: [("id".to_string(), Param::Text("abc".into()))].into(),
            now: "2026-12-06 00:00:00.000Z".into(),
            today: ("2026-12-06 00:00:00.000Z".into(), "2026-12-06 23:59:59.999Z".into()),
        };
        let all = records
            .list_as("shop", "docs", &ListQuery { per_page: 500, ..Default::default() }, None, &request)
            .expect("every record")
            .items;
        assert_eq!(all.len(), 80);
        let (mut checked, mut differ) = (0, Vec::new());
        for _ in 0..1500 {
            let text = filter(&mut rng);
            let Ok(expr) = micro_db::filter::parse(&text) else { continue };
            let q = ListQuery { filter: text.clone(), sort: "id".into(), per_page: 500, ..Default::default() };
            let listed: Vec<String> = match records.list_as("shop", "docs", &q, None, &request) {
                Ok(p) => p.items.into_iter().map(|r| r.id).collect(),
                Err(e) => panic!("{text}: {e}"),
            };
            let wanted: Vec<String> = all
                .iter()
                .filter(|r| eval.matches(r, &[&expr], &request).expect("evaluated"))
                .map(|r| r.id.clone())
                .collect();
            let leaked: Vec<&String> = listed.iter().filter(|id| !wanted.contains(id)).collect();
            assert!(leaked.is_empty(), "{text}: PostgreSQL lists {leaked:?}, which the evaluator rejects");
            if listed != wanted {
                differ.push(format!("{text}: PostgreSQL {} of the evaluator's {}", listed.len(), wanted.len()));
            }
            checked += 1;
        }
        (checked, differ)
    })
    .await
    .expect("the comparison ran");
    eprintln!("{checked} filters compared; {} where PostgreSQL is stricter:", differ.len());
    for d in &differ {
        eprintln!("  {d}");
    }
    assert!(checked > 1000, "{checked}");
    schema.drop().await;
}
