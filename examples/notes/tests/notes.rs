//! The notes example through a real `micro server`: its gateway, and the framework
//! client with typed serde calls.

use micro_test::{TestServer, http};
use notes::{CreateRequest, IdRequest, Note};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_through_the_gateway_and_the_client() {
    let s = TestServer::start().await;
    // Registering needs an account of the namespace.
    let (id, secret) = micro_test::service_account(&s.proxy(), &s.admin_token().await, "micro", "notes").await;
    let running = notes::service().server(s.proxy()).credentials(&id, &secret).start().await.expect("notes starts");
    let api = s.api();

    let r = http(&api, "POST", "/notes/create", &[], br#"{"title":"groceries","tags":["home"]}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], 1);
    let r = http(&api, "GET", "/notes/get?id=1", &[], b"").await;
    assert_eq!((r.status, r.json()["title"].as_str()), (200, Some("groceries")));
    // Typed calls from another service's point of view.
    let client = running.client();
    let note: Note = client
        .call("notes", "Notes.Create", &CreateRequest { title: "work".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(note.id, 2);
    let r = http(&api, "GET", "/notes/list?tag=home", &[], b"").await;
    assert_eq!(r.json()["notes"].as_array().map(Vec::len), Some(1), "{}", r.body);
    // Server streaming as server-sent events: one note per event.
    let r = http(&api, "GET", "/notes/export", &[], b"").await;
    assert_eq!(r.body.matches("data: ").count(), 2, "{}", r.body);

    // Bad input: 4xx with the JSON error body, and nothing is lost.
    for (path, body, status) in [
        ("/notes/create", r#"{"title":""}"#, 400),
        ("/notes/create", r#"{"title":5}"#, 400),
        ("/notes/create", r#"{"title":"x","colour":"red"}"#, 400),
        ("/notes/create", r#"{"title":"#, 400),
        ("/notes/get", r#"{"id":"abc"}"#, 400),
        ("/notes/get", r#"{"id":99}"#, 404),
        ("/notes/delete", r#"{"id":99}"#, 404),
        ("/notes/nosuch", "{}", 404),
    ] {
        let r = http(&api, "POST", path, &[], body.as_bytes()).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        assert!(r.json()["detail"].is_string(), "{}", r.body);
    }
    let err = client.call::<_, Note>("notes", "Notes.Get", &IdRequest { id: 42 }).await.unwrap_err();
    assert_eq!(err.code(), micro::Code::NotFound);

    // Declared REST routes: path segments become fields, typed by the schema.
    let r = http(&api, "GET", "/notes/2", &[], b"").await;
    assert_eq!((r.status, r.json()["title"].as_str()), (200, Some("work")), "{}", r.body);
    let r = http(&api, "GET", "/notes?tag=home", &[], b"").await;
    assert_eq!(r.json()["notes"].as_array().map(Vec::len), Some(1), "{}", r.body);
    let r = http(&api, "POST", "/notes", &[], br#"{"title":"via REST"}"#).await;
    assert_eq!(r.json()["id"], 3, "{}", r.body);
    let r = http(&api, "GET", "/notes/abc", &[], b"").await;
    assert_eq!(r.status, 400, "a capture that is not an integer: {}", r.body);
    let r = http(&api, "GET", "/notes/404", &[], b"").await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http(&api, "PUT", "/notes/2", &[], b"").await;
    assert_eq!(r.status, 404, "no route for PUT: {}", r.body);
    let r = http(&api, "DELETE", "/notes/3", &[], b"").await;
    assert_eq!(r.status, 204, "{}", r.body);
    // Path rules still win where they resolve.
    let r = http(&api, "GET", "/notes/get?id=2", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);

    let r = http(&api, "POST", "/notes/delete", &[], br#"{"id":1}"#).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http(&api, "GET", "/notes/list", &[], b"").await;
    let listed = r.json();
    let titles: Vec<&str> = listed["notes"].as_array().unwrap().iter().filter_map(|n| n["title"].as_str()).collect();
    assert_eq!(titles, ["work"]);
    running.stop().await;
}
