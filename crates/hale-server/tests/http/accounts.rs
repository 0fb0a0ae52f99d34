//! Local staff accounts over `/admin/users`: admin only, hashes never shown,
//! refusals mapped to statuses, and sign-in checks (`accounts::verify`,
//! `accounts::active`) that follow disable and enable. The demo board comes
//! with the demo accounts.

use crate::common::*;
use hale_server::accounts;
use hale_server::config::Role;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_admin_endpoints_and_sign_in() {
    let today = chrono::NaiveDate::from_ymd_opt(2031, 3, 1).unwrap();
    let (mut srv, app) = TestServer::start_demo(5, 7, today).await;

    // The demo accounts are there once the board is loaded, and sign in.
    for (user, role, _, password) in hale_server::demo::DEMO_USERS {
        let p = accounts::verify(&app, user, password).unwrap_or_else(|| panic!("demo user {user} signs in"));
        assert_eq!(p.role.as_str(), *role);
    }

    let pw = "a long enough password";
    let hash = accounts::hash_password(pw).unwrap();
    let body = json!({"user": "j.smith", "role": "clinician", "name": "Dr Jane Smith", "password_hash": hash});

    // Only an admin may manage accounts.
    srv.post("/admin/users", CLERK, &body).await.expect(403);
    srv.get("/admin/users", CLIN).await.expect(403);
    srv.get("/admin/users", "").await.expect(401);

    let r = srv.post("/admin/users", ADMIN, &body).await;
    r.expect(201);
    assert_eq!(r.body()["user"], "j.smith");

    // Listed, without the hash.
    let r = srv.get("/admin/users", ADMIN).await;
    r.expect(200);
    assert!(!r.text.contains("argon2"), "a hash leaked: {}", r.text);
    assert!(!r.text.contains("password"), "{}", r.text);
    let list = r.body().as_array().expect("a list").clone();
    let users: Vec<&str> = list.iter().map(|u| u["user"].as_str().unwrap()).collect();
    assert_eq!(users, ["admin.demo", "clerk.demo", "dr.demo", "j.smith"]);
    let js = &list[3];
    assert_eq!(js["role"], "clinician");
    assert_eq!(js["name"], "Dr Jane Smith");
    assert_eq!(js["disabled"], false);
    assert_eq!(js["updatedBy"], "admin.ada");

    // A second add of the same user is a conflict that says what to do.
    let r = srv.post("/admin/users", ADMIN, &body).await;
    r.expect(409);
    assert!(r.text.contains("hale user passwd"), "{}", r.text);
    // A bad name, role or hash is a bad request; a missing user is not found.
    let mut bad = body.clone();
    bad["user"] = json!("Bad Name");
    srv.post("/admin/users", ADMIN, &bad).await.expect(400);
    let mut bad = body.clone();
    bad["user"] = json!("x.y");
    bad["password_hash"] = json!("plain text");
    srv.post("/admin/users", ADMIN, &bad).await.expect(400);
    srv.post("/admin/users", ADMIN, &json!({"user": "x"})).await.expect(400);
    srv.req("POST", "/admin/users/ghost/disable")
        .token(ADMIN)
        .send()
        .await
        .expect(404);

    // Sign-in checks.
    let p = accounts::verify(&app, "j.smith", pw).expect("signs in");
    assert_eq!((p.user.as_str(), p.role), ("j.smith", Role::Clinician));
    assert!(accounts::verify(&app, "j.smith", "a wrong password!").is_none());
    assert!(accounts::verify(&app, "nobody", pw).is_none());
    assert!(accounts::active(&app, "j.smith").is_some());

    // Disabled: no sign-in, no session.
    let r = srv
        .req("POST", "/admin/users/j.smith/disable")
        .token(ADMIN)
        .send()
        .await;
    r.expect(200);
    assert!(accounts::verify(&app, "j.smith", pw).is_none());
    assert!(accounts::active(&app, "j.smith").is_none());
    let r = srv.get("/admin/users", ADMIN).await;
    assert_eq!(r.body()[3]["disabled"], true);

    // Enabled again, then a new password replaces the old one.
    srv.req("POST", "/admin/users/j.smith/enable")
        .token(ADMIN)
        .send()
        .await
        .expect(200);
    assert!(accounts::verify(&app, "j.smith", pw).is_some());
    let pw2 = "another long password";
    let r = srv
        .post(
            "/admin/users/j.smith/passwd",
            ADMIN,
            &json!({"password_hash": accounts::hash_password(pw2).unwrap()}),
        )
        .await;
    r.expect(200);
    assert!(accounts::verify(&app, "j.smith", pw).is_none());
    assert!(accounts::verify(&app, "j.smith", pw2).is_some());
    srv.post(
        "/admin/users/ghost/passwd",
        ADMIN,
        &json!({"password_hash": accounts::hash_password(pw2).unwrap()}),
    )
    .await
    .expect(404);

    drop(app);
    srv.stop().await;
}
