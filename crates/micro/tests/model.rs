//! Models over a real (embedded) store: save, get, list, equality and ordered queries,
//! unique indexes, re-indexing on update, delete, and queries on undeclared indexes.

use micro::Code;
use micro::data::StoreHandle;
use micro::model::{Index, Model, Query};
use micro_core::store::Table;
use micro_embedded::{DataDir, store::EmbeddedStore};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: String,
    email: String,
    age: i64,
    team: String,
}

fn user(id: &str, email: &str, age: i64, team: &str) -> User {
    User { id: id.into(), email: email.into(), age, team: team.into() }
}

#[tokio::test]
async fn typed_records_with_indexes() {
    let store =
        StoreHandle::new(Arc::new(EmbeddedStore::open(&DataDir::memory()).unwrap()), Table::new("micro", "app"));
    let users = Model::<User>::new(store.table("users"), "id")
        .index(Index::new("email").unique())
        .index(Index::new("age"))
        .index(Index::new("team"));
    for u in [
        user("1", "ann@x.io", 34, "red"),
        user("2", "bob@x.io", -3, "blue"),
        user("3", "cy@x.io", 120, "red"),
        user("4", "di/x@x.io", 7, "red"),
    ] {
        users.save(&u).await.unwrap();
    }
    assert_eq!(users.get("2").await.unwrap().email, "bob@x.io");
    assert_eq!(users.list().await.unwrap().len(), 4);

    // Equality and ordered queries.
    let red: Vec<String> = users.query(&Query::eq("team", "red")).await.unwrap().into_iter().map(|u| u.id).collect();
    assert_eq!(red, ["1", "3", "4"]);
    let by_age: Vec<i64> = users.query(&Query::by("age")).await.unwrap().iter().map(|u| u.age).collect();
    assert_eq!(by_age, [-3, 7, 34, 120], "numbers sort numerically");
    let oldest: Vec<i64> =
        users.query(&Query::by("age").desc().limit(2)).await.unwrap().iter().map(|u| u.age).collect();
    assert_eq!(oldest, [120, 34]);
    let page: Vec<i64> =
        users.query(&Query::by("age").offset(1).limit(2)).await.unwrap().iter().map(|u| u.age).collect();
    assert_eq!(page, [7, 34]);
    assert_eq!(users.query(&Query::eq("email", "di/x@x.io")).await.unwrap()[0].id, "4", "slashes in values");
    assert!(users.query(&Query::eq("email", "di")).await.unwrap().is_empty(), "equality is exact, not a prefix");

    // Unique index.
    let err = users.save(&user("5", "ann@x.io", 1, "red")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert_eq!(users.get("5").await.unwrap_err().code(), Code::NotFound, "the rejected record is not stored");
    users.save(&user("1", "ann@x.io", 35, "blue")).await.expect("saving a record again with its own value");

    // Updates re-index: the old team and age no longer match.
    let red: Vec<String> = users.query(&Query::eq("team", "red")).await.unwrap().into_iter().map(|u| u.id).collect();
    assert_eq!(red, ["3", "4"]);
    assert!(users.query(&Query::eq("age", 34)).await.unwrap().is_empty());
    assert_eq!(users.query(&Query::eq("age", 35)).await.unwrap()[0].id, "1");
    // A changed unique value frees the old one.
    users.save(&user("1", "ann2@x.io", 35, "blue")).await.unwrap();
    users.save(&user("6", "ann@x.io", 50, "red")).await.expect("the old email is free again");

    // Delete removes the record and its index entries.
    users.delete("3").await.unwrap();
    assert_eq!(users.get("3").await.unwrap_err().code(), Code::NotFound);
    assert!(users.query(&Query::eq("email", "cy@x.io")).await.unwrap().is_empty());
    assert_eq!(users.delete("3").await.unwrap_err().code(), Code::NotFound);

    // Undeclared index: a clear error naming the declared ones.
    let err = users.query(&Query::eq("name", "ann")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.detail().contains("email, age, team"), "{err}");
    // A record without a usable key.
    #[derive(Serialize, Deserialize)]
    struct NoId {
        name: String,
    }
    let odd = Model::<NoId>::new(store.table("odd"), "id");
    assert_eq!(odd.save(&NoId { name: "x".into() }).await.unwrap_err().code(), Code::InvalidArgument);
}
