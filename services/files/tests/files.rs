//! Files through a real `micro server` (the binary; its gateway serves the product):
//! uploads whole and in resumable chunks, range and conditional downloads, thumbnails
//! of real images, private files and signed URLs, files attached to database records
//! (deleted with them), the namespace's limits, and bad input. Each runs on the embedded
//! defaults and on two nodes sharing PostgreSQL.
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use serde_json::{Value, json};
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

/// A real PNG of `w`×`h` (a gradient).
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A multipart form of `fields` (name, value) and then the file.
fn form(fields: &[(&str, &str)], file_name: &str, content_type: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----microtestboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A raw request to the gateway at `api` in namespace `shop`.
async fn raw(
    api: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> micro_test::HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("micro-namespace", "shop")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    headers.extend_from_slice(extra);
    micro_test::http(api, method, path, &headers, body).await
}

/// Uploads a multipart form as the holder of `token`: the status and the reply.
async fn upload_form(
    api: &str,
    token: Option<&str>,
    fields: &[(&str, &str)],
    name: &str,
    content_type: &str,
    content: &[u8],
) -> (u16, Value) {
    let (ct, body) = form(fields, name, content_type, content);
    let r = raw(api, "POST", "/files/v1/files", token, &[("content-type", &ct)], &body).await;
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

/// A file's content as anybody without a token (no namespace header either: the
/// address names it).
async fn anonymous(api: &str, url: &str, extra: &[(&str, &str)]) -> micro_test::HttpResponse {
    micro_test::http(api, "GET", url, extra, b"").await
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_files_are_uploaded_served_and_kept_to_their_owners() {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    files_end_to_end(&s, &s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_a_file_uploaded_on_one_node_is_served_by_the_other() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_files_cluster_{}", std::process::id())).await;
    let env = [("MICRO_BACKEND", schema.url.as_str()), ("MICRO_SMTP", "log")];
    let a = ServerProcess::start(&micro(), &env);
    let b = ServerProcess::start(&micro(), &env);
    files_end_to_end(&a, &b).await;
}

/// The whole life of a namespace's files, through node `a` and node `b`.
async fn files_end_to_end(a: &ServerProcess, b: &ServerProcess) {
    let ann = a.account("shop", "ann", "user", &["admin"]).await;
    let viewer = a.account("shop", "vera", "user", &["viewer"]).await;
    let (api, bpi) = (a.api.clone(), b.api.clone());
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000, "signups_per_hour": 1000});
    let (st, v) = call(&api, "POST", "/users/v1/settings", Some(&ann), "shop", Some(lax)).await;
    assert_eq!(st, 200, "{v}");
    let (zoe, zoe_id) = a.app_user("shop", "zoe@example.com").await;
    let (yan, _) = a.app_user("shop", "yan@example.com").await;
    let picture = png(640, 480);

    // App users upload only when the namespace lets them; nobody anonymous; viewers not.
    let (st, v) = upload_form(&api, Some(&zoe), &[], "me.png", "image/png", &picture).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("may not upload"), "{v}");
    let (st, _) = upload_form(&api, None, &[], "me.png", "image/png", &picture).await;
    assert_eq!(st, 401);
    let (st, _) = upload_form(&api, Some(&viewer), &[], "me.png", "image/png", &picture).await;
    assert_eq!(st, 403);
    // Settings are the admins'; bad ones are refused.
    let (st, _) =
        call(&api, "POST", "/files/v1/settings", Some(&zoe), "shop", Some(json!({"app_uploads": true}))).await;
    assert_eq!(st, 403);
    for (bad, says) in [
        (json!({"max_file_size": 0}), "max_file_size"),
        (json!({"max_file_size": 10, "max_total": 5}), "max_total"),
        (json!({"types": ["../x"]}), "not a content type"),
        (json!({"app_uploads": true, "admin": true}), "unknown field"),
    ] {
        let (st, v) = call(&api, "POST", "/files/v1/settings", Some(&ann), "shop", Some(bad)).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{says}: {v}");
    }
    let settings = json!({"app_uploads": true, "max_file_size": 1_000_000, "max_total": 5_000_000,
                          "types": ["image/", "text/plain", "application/octet-stream"], "thumbs": ["200x200", "10x10"]});
    let (st, v) = call(&api, "POST", "/files/v1/settings", Some(&ann), "shop", Some(settings.clone())).await;
    assert_eq!((st, &v), (200, &settings));
    let (st, v) = call(&bpi, "GET", "/files/v1/settings", Some(&viewer), "shop", None).await;
    assert_eq!((st, &v), (200, &settings), "the team sees the settings, on every node");

    // Zoe uploads her picture (a multipart form, as a browser sends it).
    let (st, pic) = upload_form(&api, Some(&zoe), &[], "me.png", "image/png", &picture).await;
    assert_eq!(st, 200, "{pic}");
    assert_eq!(pic["type"], "image/png");
    assert_eq!(pic["size"], picture.len());
    assert_eq!(pic["owner"], zoe_id.as_str());
    assert_eq!(pic["owner_kind"], "user");
    assert_eq!(pic["public"], false);
    let url = pic["url"].as_str().unwrap().to_string();
    let id = pic["id"].as_str().unwrap().to_string();
    assert_eq!(url, format!("/files/v1/content/shop/{id}/me.png"));

    // She reads it back whole, from either node, with its headers.
    let got = raw(&bpi, "GET", &url, Some(&zoe), &[], b"").await;
    assert_eq!(got.status, 200, "{}", got.head);
    assert_eq!(got.bytes, picture);
    assert_eq!(got.header("content-type"), Some("image/png"));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert!(got.header("content-disposition").unwrap().starts_with("inline"), "{}", got.head);
    let etag = got.header("etag").unwrap().to_string();
    let again = raw(&api, "GET", &url, Some(&zoe), &[("if-none-match", &etag)], b"").await;
    assert_eq!(again.status, 304, "{}", again.head);
    // Ranges: the first bytes, the last ones, from an offset, and past the end.
    let part = raw(&api, "GET", &url, Some(&zoe), &[("range", "bytes=0-99")], b"").await;
    assert_eq!(part.status, 206, "{}", part.head);
    assert_eq!(part.bytes, picture[..100]);
    assert_eq!(part.header("content-range").map(str::to_string), Some(format!("bytes 0-99/{}", picture.len())));
    let tail = raw(&bpi, "GET", &url, Some(&zoe), &[("range", "bytes=-10")], b"").await;
    assert_eq!((tail.status, &tail.bytes[..]), (206, &picture[picture.len() - 10..]));
    let from = format!("bytes={}-", picture.len() - 5);
    let end = raw(&api, "GET", &url, Some(&zoe), &[("range", &from)], b"").await;
    assert_eq!((end.status, &end.bytes[..]), (206, &picture[picture.len() - 5..]));
    let past = raw(&api, "GET", &url, Some(&zoe), &[("range", "bytes=99999999-")], b"").await;
    assert_eq!(past.status, 416, "{}", past.head);
    let stale = raw(&api, "GET", &url, Some(&zoe), &[("range", "bytes=0-9"), ("if-range", "\"other\"")], b"").await;
    assert_eq!((stale.status, stale.bytes.len()), (200, picture.len()), "another version: the whole file");

    // A thumbnail, made from the real image, fitting the box with the aspect kept; then
    // served from the cache (the same bytes, on the other node too).
    let thumb = raw(&api, "GET", &format!("{url}?thumb=200x200"), Some(&zoe), &[], b"").await;
    assert_eq!(thumb.status, 200, "{}", thumb.body);
    assert_eq!(thumb.header("content-type"), Some("image/png"));
    let small = image::load_from_memory(&thumb.bytes).unwrap();
    assert_eq!((small.width(), small.height()), (200, 150));
    let cached = raw(&bpi, "GET", &format!("{url}?thumb=200x200"), Some(&zoe), &[], b"").await;
    assert_eq!(cached.bytes, thumb.bytes);
    for bad in ["0x0", "abc", "5000x10", "200", "300x300"] {
        let r = raw(&api, "GET", &format!("{url}?thumb={bad}"), Some(&zoe), &[], b"").await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // Private: nobody else sees it (nor learns it exists); the team does.
    assert_eq!(anonymous(&api, &url, &[]).await.status, 404);
    assert_eq!(raw(&api, "GET", &url, Some(&yan), &[], b"").await.status, 404);
    let (st, _) = call(&api, "GET", &format!("/files/v1/files/{id}"), Some(&yan), "shop", None).await;
    assert_eq!(st, 404);
    assert_eq!(raw(&bpi, "GET", &url, Some(&viewer), &[], b"").await.status, 200);
    let (st, _) = call(&api, "DELETE", &format!("/files/v1/files/{id}"), Some(&yan), "shop", None).await;
    assert_eq!(st, 404, "another user cannot delete it");
    // A signed URL lets anybody read it, until it expires; a changed one nobody.
    let (st, signed) =
        call(&api, "POST", &format!("/files/v1/files/{id}/url"), Some(&zoe), "shop", Some(json!({"expires_in": 600})))
            .await;
    assert_eq!(st, 200, "{signed}");
    let signed_url = signed["url"].as_str().unwrap().to_string();
    let got = anonymous(&bpi, &signed_url, &[]).await;
    assert_eq!((got.status, got.bytes.len()), (200, picture.len()), "{}", got.head);
    let tampered = signed_url.replace("expires=", "expires=1");
    assert_eq!(anonymous(&api, &tampered, &[]).await.status, 403);
    let other = signed_url.replace(&id, "aaaaaaaaaaaaaaaaaaaa");
    assert_eq!(anonymous(&api, &other, &[]).await.status, 404);
    let (st, short) =
        call(&api, "POST", &format!("/files/v1/files/{id}/url"), Some(&ann), "shop", Some(json!({"expires_in": 1})))
            .await;
    assert_eq!(st, 200, "{short}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = anonymous(&api, short["url"].as_str().unwrap(), &[]).await;
    assert_eq!(expired.status, 403);
    assert!(expired.body.contains("expired"), "{}", expired.body);
    for bad in [json!({"expires_in": 0}), json!({"expires_in": 99_999_999}), json!({"expires": 5})] {
        let (st, v) = call(&api, "POST", &format!("/files/v1/files/{id}/url"), Some(&zoe), "shop", Some(bad)).await;
        assert_eq!(st, 400, "{v}");
    }
    let (st, _) = call(&api, "POST", &format!("/files/v1/files/{id}/url"), Some(&yan), "shop", Some(json!({}))).await;
    assert_eq!(st, 404, "only its owner or the team signs URLs");

    // A public file (a raw body), read by anybody, from any origin.
    let path = "/files/v1/files?name=logo.png&public=true";
    let logo = raw(&api, "POST", path, Some(&ann), &[("content-type", "image/png")], &png(32, 32)).await;
    assert_eq!(logo.status, 200, "{}", logo.body);
    let logo = logo.json();
    let open = anonymous(&bpi, logo["url"].as_str().unwrap(), &[]).await;
    assert_eq!(open.status, 200, "{}", open.head);
    assert_eq!(open.header("cross-origin-resource-policy"), Some("cross-origin"));
    assert!(open.header("cache-control").unwrap().starts_with("public"), "{}", open.head);

    // Bad input, each refused with a clear answer, nothing kept.
    let text = b"just some words, not a picture".to_vec();
    let too_big = vec![0u8; 1_000_001];
    let cases: Vec<(&str, &str, &[u8], u16, &str)> = vec![
        ("../../etc/passwd", "text/plain", &text, 400, "not a file name"),
        ("a/b.txt", "text/plain", &text, 400, "not a file name"),
        ("a\\b.txt", "text/plain", &text, 400, "not a file name"),
        ("fake.png", "image/png", &text, 415, "not the image/png"),
        ("big.bin", "application/octet-stream", &too_big, 413, "larger than"),
        ("doc.pdf", "application/pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415, "not allowed"),
    ];
    for (name, ct, content, status, says) in cases {
        let (st, v) = upload_form(&api, Some(&zoe), &[], name, ct, content).await;
        assert_eq!(st, status, "{name}: {v}");
        assert!(v["detail"].as_str().unwrap_or("").contains(says), "{name}: {says}: {v}");
    }
    let (ct, body) = form(&[], "x.txt", "text/plain", &text);
    let body = [body, form(&[("late", "1")], "y.txt", "text/plain", &text).1].concat();
    let r = raw(&api, "POST", "/files/v1/files", Some(&zoe), &[("content-type", &ct)], &body).await;
    assert_eq!(r.status, 200, "the first file of a form is stored, what follows its end ignored: {}", r.body);
    let words = r.json();
    assert_eq!(words["type"], "text/plain; charset=utf-8");
    let thumb_of_text =
        raw(&api, "GET", &format!("{}?thumb=10x10", words["url"].as_str().unwrap()), Some(&zoe), &[], b"").await;
    assert_eq!(thumb_of_text.status, 400, "{}", thumb_of_text.body);
    let (st, v) = upload_form(&api, Some(&zoe), &[("colour", "red")], "x.txt", "text/plain", &text).await;
    assert_eq!(st, 400, "{v}");
    let r = raw(&api, "POST", "/files/v1/files", Some(&zoe), &[("content-type", "multipart/form-data")], b"junk").await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Resumable: chunks at the offset received so far, from either node.
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (st, up) = call(
        &api,
        "POST",
        "/files/v1/uploads",
        Some(&zoe),
        "shop",
        Some(json!({"name": "data.bin", "size": blob.len()})),
    )
    .await;
    assert_eq!(st, 200, "{up}");
    let upload = format!("/files/v1/uploads/{}", up["id"].as_str().unwrap());
    let chunk =
        |first: usize, last: usize| (format!("bytes {first}-{last}/{}", blob.len()), blob[first..=last].to_vec());
    let (range, data) = chunk(0, 99_999);
    let r = raw(&api, "PUT", &upload, Some(&zoe), &[("content-range", &range)], &data).await;
    assert_eq!((r.status, &r.json()["offset"]), (200, &json!(100_000)), "{}", r.body);
    let (range, data) = chunk(200_000, 299_999);
    let r = raw(&bpi, "PUT", &upload, Some(&zoe), &[("content-range", &range)], &data).await;
    assert_eq!(r.status, 409, "not at the offset: {}", r.body);
    assert_eq!(r.header("upload-offset"), Some("100000"));
    let r = raw(&bpi, "PUT", &upload, Some(&yan), &[("content-range", &range)], &data).await;
    assert_eq!(r.status, 404, "somebody else's upload");
    let (st, at) = call(&bpi, "GET", &upload, Some(&zoe), "shop", None).await;
    assert_eq!((st, &at["offset"]), (200, &json!(100_000)), "{at}");
    let (range, data) = chunk(100_000, 199_999);
    assert_eq!(raw(&bpi, "PUT", &upload, Some(&zoe), &[("content-range", &range)], &data).await.status, 200);
    let (range, data) = chunk(200_000, 299_999);
    let r = raw(&api, "PUT", &upload, Some(&zoe), &[("content-range", &range)], &data).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = r.json();
    assert_eq!(done["file"]["size"], blob.len());
    let whole = raw(&bpi, "GET", done["file"]["url"].as_str().unwrap(), Some(&zoe), &[], b"").await;
    assert_eq!(whole.bytes, blob, "the chunks make the file");
    // A finished upload tells its file (a client whose last answer was lost learns it),
    // and the last chunk sent again gets the same answer, not a second file.
    let (st, at) = call(&bpi, "GET", &upload, Some(&zoe), "shop", None).await;
    assert_eq!((st, &at["offset"], &at["file"]["id"]), (200, &json!(blob.len()), &done["file"]["id"]), "{at}");
    let again = raw(&api, "PUT", &upload, Some(&zoe), &[("content-range", &range)], &data).await;
    assert_eq!((again.status, &again.json()["file"]["id"]), (200, &done["file"]["id"]), "{}", again.body);
    let (st, v) = call(&api, "POST", "/files/v1/uploads", Some(&zoe), "shop", Some(json!({"size": 2_000_000}))).await;
    assert_eq!(st, 413, "{v}");

    // Files attached to a record: whoever may see the record sees them; deleting the
    // record deletes them.
    let posts = json!({"name": "posts", "rules": {"create": "owner = @request.auth.id", "view": "owner = @request.auth.id",
                                                 "update": "owner = @request.auth.id", "list": "owner = @request.auth.id",
                                                 "delete": "owner = @request.auth.id"}});
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(posts)).await;
    assert_eq!(st, 200, "{v}");
    let (st, post) =
        call(&api, "POST", "/db/v1/posts/records", Some(&zoe), "shop", Some(json!({"data": {"owner": zoe_id}}))).await;
    assert_eq!(st, 200, "{post}");
    let record = format!("posts/{}", post["id"].as_str().unwrap());
    let (st, v) = upload_form(&api, Some(&yan), &[("record", &record)], "x.png", "image/png", &png(8, 8)).await;
    assert_eq!(st, 403, "only who may change the record attaches to it: {v}");
    for bad in ["posts", "posts/../../x", "no_such/abc"] {
        let (st, v) = upload_form(&api, Some(&zoe), &[("record", bad)], "x.png", "image/png", &png(8, 8)).await;
        assert!(st == 400 || st == 403, "{bad}: {st} {v}");
    }
    let (st, att) = upload_form(&api, Some(&zoe), &[("record", &record)], "cover.png", "image/png", &png(16, 16)).await;
    assert_eq!(st, 200, "{att}");
    assert_eq!(att["record"], record.as_str());
    let att_url = att["url"].as_str().unwrap().to_string();
    let (st, listed) = call(&bpi, "GET", &format!("/files/v1/files?record={record}"), Some(&zoe), "shop", None).await;
    assert_eq!((st, listed["files"].as_array().map(Vec::len)), (200, Some(1)), "{listed}");
    let (st, _) = call(&api, "GET", &format!("/files/v1/files?record={record}"), Some(&yan), "shop", None).await;
    assert_eq!(st, 404);
    assert_eq!(raw(&api, "GET", &att_url, Some(&yan), &[], b"").await.status, 404);
    let (st, _) = call(
        &bpi,
        "DELETE",
        &format!("/db/v1/posts/records/{}", post["id"].as_str().unwrap()),
        Some(&zoe),
        "shop",
        None,
    )
    .await;
    assert!(st == 200 || st == 204, "{st}");
    let gone = micro_test::eventually(Duration::from_secs(10), || async {
        raw(&api, "GET", &att_url, Some(&ann), &[], b"").await.status == 404
    })
    .await;
    assert!(gone, "the record's file went with it");

    // Listing: an app user sees their own; the team everything.
    let (st, mine) = call(&api, "GET", "/files/v1/files", Some(&zoe), "shop", None).await;
    assert_eq!(st, 200, "{mine}");
    assert!(mine["files"].as_array().unwrap().iter().all(|f| f["owner"] == zoe_id.as_str()), "{mine}");
    let (st, all) = call(&bpi, "GET", "/files/v1/files", Some(&viewer), "shop", None).await;
    assert_eq!(st, 200);
    assert!(all["files"].as_array().unwrap().len() > mine["files"].as_array().unwrap().len(), "{all}");
    assert_eq!(call(&api, "GET", "/files/v1/files", None, "shop", None).await.0, 401);

    // Deleting: the owner may; the content and its thumbnails go.
    let (st, _) = call(&bpi, "DELETE", &format!("/files/v1/files/{id}"), Some(&zoe), "shop", None).await;
    assert_eq!(st, 204);
    assert_eq!(raw(&api, "GET", &url, Some(&ann), &[], b"").await.status, 404);
    assert_eq!(raw(&api, "GET", &format!("{url}?thumb=200x200"), Some(&ann), &[], b"").await.status, 404);
    assert_eq!(anonymous(&api, &signed_url, &[]).await.status, 404, "its signed URLs end with it");

    // The namespace's total: a full namespace takes no more.
    let (st, _) = call(
        &api,
        "POST",
        "/files/v1/settings",
        Some(&ann),
        "shop",
        Some(json!({"app_uploads": true, "max_file_size": 1000, "max_total": 1000})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = upload_form(&api, Some(&zoe), &[], "x.bin", "application/octet-stream", &[1u8; 10]).await;
    assert_eq!(st, 413, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("max_total"), "{v}");
}
